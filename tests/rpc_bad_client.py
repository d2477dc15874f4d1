#!/usr/bin/env python3
"""An RPC client whose graph makes ggml-rpc's server stop on a failed check (a tensor that
reaches past its 64-byte buffer): HELLO, ALLOC_BUFFER, BUFFER_GET_BASE, then GRAPH_COMPUTE.
Used by tests/rpc.rs to check that dlm-rpc-server serves the next client after it.

Usage: rpc_bad_client.py PORT
"""
import socket, struct, sys
port = int(sys.argv[1])
s = socket.create_connection(('127.0.0.1', port))
def rx(n):
    b=b''
    while len(b)<n:
        c=s.recv(n-len(b))
        if not c: raise EOFError('closed')
        b+=c
    return b
def cmd(c, data, rsp=True):
    s.sendall(bytes([c]) + struct.pack('<Q', len(data)) + data)
    if rsp:
        n = struct.unpack('<Q', rx(8))[0]; return rx(n)
cmd(14, b'\0'*24)                                   # HELLO
r = cmd(0, struct.pack('<IQ', 0, 64))               # ALLOC_BUFFER dev 0, 64 bytes
ptr = struct.unpack('<QQ', r)[0]
base = struct.unpack('<Q', cmd(3, struct.pack('<Q', ptr)))[0]  # BUFFER_GET_BASE
t = struct.pack('<QIQ4I4II', 1, 0, ptr, 1000,1,1,1, 4,4000,4000,4000, 0) + b'\0'*64 + struct.pack('<i', 0) + b'\0'*80 + struct.pack('<QQQ', 0, 0, base) + b'\0'*64 + struct.pack('<i', 1)
assert len(t) == 296
g = struct.pack('<II', 0, 1) + struct.pack('<Q', 1) + struct.pack('<I', 1) + t
cmd(10, g, rsp=False)                               # GRAPH_COMPUTE
print('sent')
