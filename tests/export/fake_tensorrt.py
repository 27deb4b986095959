"""A stand-in for the subset of the ``tensorrt`` Python module that metaedge uses, for machines without
TensorRT (this one). It mirrors the documented 10.x/11.x signatures - in particular, on 11.x there is no
``BuilderFlag.FP16`` at all, so code that touches it fails here as it would on a real TensorRT 11 - and it
records every call. "Device memory" is a table of numpy arrays at fake addresses; executing an engine runs
the ONNX file it was built from with ONNX Runtime, reading and writing through those addresses, so the
backend's chunking and pointer arithmetic are checked for real.
"""
from __future__ import annotations

import enum
import json

import numpy as np


class FakeMemory:
    """Fake device allocations: address -> numpy buffer (the backend's ``memory=`` hook)."""

    def __init__(self):
        self.blocks: dict[int, np.ndarray] = {}
        self._next = 0x7F0000000000

    stream = 0x5EED  # the backend's own stream (CudaMemory.stream)

    class Array:
        def __init__(self, owner, base, arr, stream):
            self.owner, self.base, self.host, self.stream = owner, base, arr, stream
            self.__cuda_array_interface__ = {"shape": arr.shape, "typestr": "<f4", "data": (base, False),
                                             "version": 3, "strides": None, "stream": 1 if stream == 0 else stream}

        def to_numpy(self):
            return self.host.copy()

    def _alloc(self, arr, stream):
        base = self._next
        self._next += (arr.nbytes + 0xFFFF) & ~0xFFFF
        self.blocks[base] = arr
        return FakeMemory.Array(self, base, arr, stream), base

    def upload(self, batch, stream):
        return self._alloc(np.ascontiguousarray(batch, dtype=np.float32).copy(), stream)

    def empty(self, shape, stream):
        return self._alloc(np.full(shape, np.nan, np.float32), stream)  # poisoned: unwritten rows show as NaN

    def view(self, ptr: int, shape) -> np.ndarray:
        for base, arr in self.blocks.items():
            if base <= ptr < base + arr.nbytes:
                offset = ptr - base
                assert offset % 4 == 0, "misaligned float32 address"
                flat = arr.reshape(-1)
                count = int(np.prod(shape))
                assert offset // 4 + count <= flat.size, "access past the end of an allocation"
                return flat[offset // 4: offset // 4 + count].reshape(shape)
        raise AssertionError(f"address {ptr:#x} is not inside any allocation")


def make_fake_tensorrt(version: str = "10.3.0", memory: FakeMemory | None = None, unsupported_ops=()):
    """A module-like object with the TensorRT API subset; ``calls`` records what was used."""
    major = int(version.split(".")[0])
    calls: list[tuple] = []

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    severity_enum = Severity

    class ILogger:
        Severity = severity_enum

        def __init__(self):
            pass

        def log(self, severity, msg):  # pragma: no cover - overridden
            raise NotImplementedError

    class IProgressMonitor:
        def __init__(self):
            pass

    flags = ["TF32", "REFIT", "SPARSE_WEIGHTS"] + (["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"] if major < 11 else [])
    BuilderFlag = enum.Enum("BuilderFlag", flags)
    MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM"])
    TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    DataType = enum.Enum("DataType", ["FLOAT", "HALF", "INT32"])

    class ParserError:
        def __init__(self, node, name, op, desc):
            self._node, self._name, self._op, self._desc = node, name, op, desc

        def node(self): return self._node
        def node_name(self): return self._name
        def node_operator(self): return self._op
        def desc(self): return self._desc
        def code(self): return "UNSUPPORTED_NODE"

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self):
            self.inputs, self.onnx_path, self.has_qdq = [], None, False

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            assert isinstance(logger, ILogger), "OnnxParser needs a trt.ILogger"
            self.network, self.errors = network, []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path):
            import onnx
            import onnx.numpy_helper
            calls.append(("parse_from_file", path))
            model = onnx.load(path)
            opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"]
            if opset > (20 if major < 11 else 25):
                self.errors.append(ParserError(-1, "", "", f"unsupported opset {opset}"))
            for i, node in enumerate(model.graph.node):
                if node.op_type in unsupported_ops:
                    self.errors.append(ParserError(i, node.name, node.op_type, "no importer"))
            # TensorRT quantises symmetrically only: Q/DQ zero points must be int8 zeros (the uint8 CPU model fails)
            inits = {t.name: t for t in model.graph.initializer}
            for i, node in enumerate(model.graph.node):
                if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                    self.network.has_qdq = True
                    zp = inits.get(node.input[2]) if len(node.input) > 2 else None
                    if zp is not None and (zp.data_type != onnx.TensorProto.INT8
                                           or onnx.numpy_helper.to_array(zp).any()):
                        self.errors.append(ParserError(i, node.name, node.op_type,
                                                       "TensorRT supports only symmetric INT8 quantization "
                                                       "(int8 zero point 0)"))
                        break
            if self.errors:
                return False
            inp = model.graph.input[0]
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim]
            self.network.inputs = [Tensor(inp.name, tuple(dims))]
            self.network.onnx_path = path
            self.network.output = model.graph.output[0].name
            return True

    class TimingCache:
        def __init__(self, data: bytes):
            self.entries = json.loads(data) if data else {"device": "fake-gpu", "n": 0}

        def serialize(self):
            return memoryview(json.dumps(self.entries).encode())

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max):
            calls.append(("set_shape", name, tuple(min), tuple(opt), tuple(max)))
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.pools, self.cache, self.progress_monitor = set(), [], {}, None, None

        def set_memory_pool_limit(self, pool, pool_size):
            assert isinstance(pool, MemoryPoolType) and isinstance(pool_size, int)
            self.pools[pool.name] = pool_size

        def set_flag(self, flag):
            assert isinstance(flag, BuilderFlag)
            calls.append(("set_flag", flag.name))
            self.flags.add(flag.name)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, serialized_timing_cache):
            data = bytes(serialized_timing_cache)
            if data and not data.startswith(b"{"):
                return None  # TensorRT logs an error and returns None for garbage
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", cache.entries["n"], ignore_mismatch))
            if cache.entries.get("device") != "fake-gpu" and not ignore_mismatch:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class HostMemory(bytes):
        """IHostMemory: exposes the plan through the buffer protocol."""

    class Builder:
        def __init__(self, logger):
            assert isinstance(logger, ILogger)
            self.logger = logger

        def create_network(self, flags=0):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network", sorted(config.flags), dict(config.pools)))
            if config.progress_monitor is not None:
                pm = config.progress_monitor
                pm.phase_start("Building engine", None, 2)
                pm.phase_start("Tactic selection", "Building engine", 3)
                for s in range(3):
                    assert pm.step_complete("Tactic selection", s) is True
                pm.phase_finish("Tactic selection")
                pm.step_complete("Building engine", 0)
                pm.phase_finish("Building engine")
            if config.cache is not None:
                config.cache.entries["n"] += 1
            if network.has_qdq and major < 11 and "INT8" not in config.flags:
                self.logger.log(Severity.ERROR, "Network has Q/DQ layers but the INT8 builder flag is not set")
                return None
            (name, (lo, opt, hi)), = config.profiles[0].shapes.items()
            plan = {"trt": version, "onnx": network.onnx_path, "input": name, "output": network.output,
                    "min": lo, "opt": opt, "max": hi, "fp16": "FP16" in config.flags,
                    "int8": network.has_qdq}
            return HostMemory(json.dumps(plan).encode())

    class Context:
        def __init__(self, engine):
            self.engine, self.shape, self.addresses = engine, None, {}
            import onnxruntime
            self.session = onnxruntime.InferenceSession(engine.plan["onnx"], providers=["CPUExecutionProvider"])

        def set_input_shape(self, name, shape):
            calls.append(("set_input_shape", name, tuple(shape)))
            lo, hi = self.engine.plan["min"], self.engine.plan["max"]
            if name != self.engine.plan["input"] or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.shape = tuple(shape)
            return True

        def set_tensor_address(self, name, memory):
            self.addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle):
            calls.append(("execute_async_v3", stream_handle, self.shape[0]))
            plan = self.engine.plan
            x = memory.view(self.addresses[plan["input"]], self.shape)
            y = self.session.run(None, {plan["input"]: np.array(x)})[0]
            memory.view(self.addresses[plan["output"]], y.shape)[...] = y
            return True

    class Engine:
        def __init__(self, plan):
            self.plan = plan
            self._names = [plan["input"], plan["output"]]

        @property
        def num_io_tensors(self):
            return 2

        def get_tensor_name(self, i):
            return self._names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == self.plan["input"] else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return DataType.FLOAT

        def get_tensor_profile_shape(self, name, profile_index):
            assert name == self.plan["input"] and profile_index == 0
            return [tuple(self.plan["min"]), tuple(self.plan["opt"]), tuple(self.plan["max"])]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            assert isinstance(logger, ILogger)
            self.logger = logger

        def deserialize_cuda_engine(self, serialized_engine):
            plan = json.loads(bytes(serialized_engine))
            if plan["trt"] != version:  # real TensorRT refuses plans from another version
                self.logger.log(Severity.ERROR, f"engine plan from TensorRT {plan['trt']}")
                return None
            return Engine(plan)

    ns = dict(__version__=version, ILogger=ILogger, IProgressMonitor=IProgressMonitor, BuilderFlag=BuilderFlag,
              MemoryPoolType=MemoryPoolType, TensorIOMode=TensorIOMode, DataType=DataType, Builder=Builder,
              OnnxParser=OnnxParser, Runtime=Runtime, calls=calls)
    return type("FakeTensorRT", (), ns)
