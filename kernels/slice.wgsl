// y [len, n] = values start..start + len along ne0 of x [ne0, n] (a part of a fused projection,
// made contiguous). One thread per output value.

struct Params {
    ne0: u32, len: u32, n: u32, groups_x: u32,
    start: u32, x_off: u32, y_off: u32, _pad0: u32,
    _pad1: u32, _pad2: u32, _pad3: u32, _pad4: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * P.groups_x + wid.x) * 256u + lid;
    if (i >= P.len * P.n) {
        return;
    }
    let col = i / P.len;
    y[P.y_off + i] = x[P.x_off + col * P.ne0 + P.start + i % P.len];
}
