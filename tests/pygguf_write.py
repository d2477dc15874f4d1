#!/usr/bin/env python3
"""Write a GGUF with PyPI's `gguf` writer (every value type, f32/f16/Q8_0 tensors) for tests/gguf.rs."""
import sys

import numpy as np
import gguf

w = gguf.GGUFWriter(sys.argv[1], "llama")
w.add_uint8("t.u8", 7)
w.add_int64("t.i64", -(1 << 40))
w.add_float64("t.f64", 0.125)
w.add_bool("t.bool", True)
w.add_array("t.strs", ["a", "b", "ти"])
ramp = (np.arange(128, dtype=np.float32) / 64.0 - 1.0).reshape(2, 64)
w.add_tensor("ramp.f32", ramp)
w.add_tensor("ramp.f16", ramp.astype(np.float16))
q = gguf.quants.quantize(ramp, gguf.GGMLQuantizationType.Q8_0)
w.add_tensor("ramp.q8_0", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
