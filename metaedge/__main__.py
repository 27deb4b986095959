import sys

from metaedge.cli.main import main

sys.exit(main())
