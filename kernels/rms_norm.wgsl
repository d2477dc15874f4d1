// RMS norm (CENTER = 0): y = x / sqrt(mean(x^2) + eps), or LayerNorm without its weight and
// bias (CENTER = 1): y = (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps), over each row of
// ne0 values; one workgroup per row.

struct Params {
    ne0: u32, rows: u32, x_off: u32, y_off: u32,
    eps: f32, groups_x: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

override CENTER: u32 = 0u;

// `partial` and `reduce` come from reduce.wgsl, appended to this source.

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * P.groups_x + wid.x;
    if (row >= P.rows) {
        return; // uniform across the workgroup
    }
    let xb = P.x_off + row * P.ne0;
    var mean = 0.0;
    if (CENTER != 0u) {
        var m = 0.0;
        for (var i = lid; i < P.ne0; i += 256u) {
            m += x[xb + i];
        }
        partial[lid] = m;
        mean = reduce(lid) / f32(P.ne0);
    }
    var s = 0.0;
    for (var i = lid; i < P.ne0; i += 256u) {
        let v = x[xb + i] - mean;
        s += v * v;
    }
    partial[lid] = s;
    let scale = inverseSqrt(reduce(lid) / f32(P.ne0) + P.eps);
    let yb = P.y_off + row * P.ne0;
    for (var i = lid; i < P.ne0; i += 256u) {
        y[yb + i] = (x[xb + i] - mean) * scale;
    }
}
