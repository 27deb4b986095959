"""The declared inputs and outputs of an ONNX file, read without the ``onnx`` package (the device has none).

An ONNX file is a protobuf ``ModelProto``; its ``graph`` (field 7) lists ``input`` (11) and ``output`` (12)
``ValueInfoProto``s: name (1) and type (2) -> ``tensor_type`` (1) -> ``elem_type`` (1) and ``shape`` (2) ->
``dim`` (1) -> ``dim_value`` (1) or ``dim_param`` (2). This reader walks the wire format with ``pread``,
skipping everything else (weights included) by length, so it reads a few kilobytes of a model of any size and
bounds every length it meets by the file's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from metaedge.runtime.fileio import open_regular

__all__ = ["TensorDecl", "graph_io", "OnnxFormatError", "FLOAT"]

FLOAT = 1                      # TensorProto.DataType.FLOAT
_MAX_DECL_BYTES = 1 << 20      # one input/output declaration
_MAX_FIELDS = 10_000_000


class OnnxFormatError(ValueError):
    """The file is not a readable ONNX model (the message says where the protobuf stops making sense)."""


@dataclass(frozen=True)
class TensorDecl:
    name: str
    elem_type: int                          # 1 = float32
    shape: tuple[int | str | None, ...]     # int dims, symbolic names, None when unspecified


class _Wire:
    """Protobuf wire-format reading of bytes[start:end] of a file or a buffer."""

    def __init__(self, fd: int | None, data: bytes | None, start: int, end: int):
        self.fd, self.data, self.pos, self.end = fd, data, start, end

    def _bytes(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise OnnxFormatError(f"a field runs past its message (offset {self.pos}, {n} bytes)")
        if self.data is not None:
            out = self.data[self.pos:self.pos + n]
        else:
            out = os.pread(self.fd, n, self.pos)
            if len(out) != n:
                raise OnnxFormatError(f"the file ends inside a field (offset {self.pos})")
        self.pos += n
        return out

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            (b,) = self._bytes(1)
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise OnnxFormatError(f"a varint longer than 10 bytes (offset {self.pos})")

    def fields(self):
        """(field number, wire type, value or (start, length) of a length-delimited field), skipping nothing."""
        count = 0
        while self.pos < self.end:
            count += 1
            if count > _MAX_FIELDS:
                raise OnnxFormatError("too many fields")
            key = self.varint()
            number, wire = key >> 3, key & 7
            if wire == 0:
                yield number, wire, self.varint()
            elif wire == 1:
                self._skip(8)
                yield number, wire, None
            elif wire == 5:
                self._skip(4)
                yield number, wire, None
            elif wire == 2:
                length = self.varint()
                start = self.pos
                self._skip(length)
                yield number, wire, (start, length)
            else:
                raise OnnxFormatError(f"unsupported wire type {wire} (offset {self.pos}): not an ONNX file")

    def _skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise OnnxFormatError(f"a field runs past its message (offset {self.pos}, {n} bytes)")
        self.pos += n

    def sub(self, span: tuple[int, int]) -> "_Wire":
        start, length = span
        return _Wire(self.fd, self.data, start, start + length)

    def read(self, span: tuple[int, int]) -> bytes:
        start, length = span
        saved = self.pos
        self.pos = start
        try:
            return self._bytes(length)
        finally:
            self.pos = saved


def _decl(buf: bytes) -> TensorDecl:
    w = _Wire(None, buf, 0, len(buf))
    name, elem, shape = "", 0, None
    for number, wire, value in w.fields():
        if number == 1 and wire == 2:
            name = w.read(value).decode("utf-8", "replace")
        elif number == 2 and wire == 2:  # TypeProto
            t = w.sub(value)
            for n2, w2, v2 in t.fields():
                if n2 == 1 and w2 == 2:  # tensor_type
                    tt = t.sub(v2)
                    for n3, w3, v3 in tt.fields():
                        if n3 == 1 and w3 == 0:
                            elem = v3
                        elif n3 == 2 and w3 == 2:  # TensorShapeProto
                            shape = []
                            sp = tt.sub(v3)
                            for n4, w4, v4 in sp.fields():
                                if n4 == 1 and w4 == 2:
                                    dim: int | str | None = None
                                    d = sp.sub(v4)
                                    for n5, w5, v5 in d.fields():
                                        if n5 == 1 and w5 == 0:
                                            dim = v5 - (1 << 64) if v5 >= 1 << 63 else v5
                                        elif n5 == 2 and w5 == 2:
                                            dim = d.read(v5).decode("utf-8", "replace")
                                    shape.append(dim)
    return TensorDecl(name, elem, tuple(shape) if shape is not None else ())


def graph_io(path: str | os.PathLike, max_bytes: int = 1 << 31) -> tuple[list[TensorDecl], list[TensorDecl]]:
    """``(inputs, outputs)`` declared by the ONNX model at ``path`` (a regular file of at most ``max_bytes``)."""
    fd, size = open_regular(path, "ONNX model", max_bytes)
    try:
        top = _Wire(fd, None, 0, size)
        graph = None
        for number, wire, value in top.fields():
            if number == 7 and wire == 2:
                graph = value
        if graph is None:
            raise OnnxFormatError("no graph (field 7) in the model: not an ONNX file")
        g = top.sub(graph)
        inputs, outputs = [], []
        for number, wire, value in g.fields():
            if number in (11, 12) and wire == 2:
                if value[1] > _MAX_DECL_BYTES:
                    raise OnnxFormatError(f"a graph {'input' if number == 11 else 'output'} declaration of "
                                          f"{value[1]} bytes")
                (inputs if number == 11 else outputs).append(_decl(g.read(value)))
        return inputs, outputs
    finally:
        os.close(fd)
