// What the host sampler needs of each row of logits x [ne0, rows], one workgroup per row:
// y[5 row ..] = (ne0 − i for the lowest index i of the row's maximum m, Σ exp(x − m),
// Σ exp(x − m)(x − m), the largest x − m below 0 (−1e30 if none), how many entries are below m);
// Σ exp is −1 when the row holds a NaN or an infinity.

struct Params {
    ne0: u32, rows: u32, x_off: u32, y_off: u32,
    groups_x: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// `partial`, `reduce` and `reduce_max` come from reduce.wgsl, appended to this source.
var<workgroup> idx: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * P.groups_x + wid.x;
    if (row >= P.rows) {
        return; // uniform across the workgroup
    }
    let xb = P.x_off + row * P.ne0;
    // The maximum and its lowest index: each thread walks its ids upwards (strictly greater
    // keeps its first), then pairs join preferring the lower index on equal values.
    var m = -3.40282347e38; // the lowest f32 (an infinite constant is not valid WGSL)
    var mi = 0xffffffffu;
    for (var i = lid; i < P.ne0; i += 256u) {
        let v = x[xb + i];
        if (v > m) {
            m = v;
            mi = i;
        }
    }
    partial[lid] = m;
    idx[lid] = mi;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            let bv = partial[lid + stride];
            let bi = idx[lid + stride];
            if (bv > partial[lid] || (bv == partial[lid] && bi < idx[lid])) {
                partial[lid] = bv;
                idx[lid] = bi;
            }
        }
        workgroupBarrier();
    }
    m = partial[0];
    let first = idx[0];
    workgroupBarrier();
    var z = 0.0;
    var s = 0.0;
    var second = -1e30;
    var below = 0.0;
    var bad = 0.0;
    for (var i = lid; i < P.ne0; i += 256u) {
        // Non-finite logits by their bits: WGSL lets a compiler assume floats are finite.
        bad += select(0.0, 1.0, (bitcast<u32>(x[xb + i]) & 0x7f800000u) == 0x7f800000u);
        let d = x[xb + i] - m;
        let e = exp(d);
        z += e;
        s += e * d;
        if (d < 0.0) {
            second = max(second, d);
            below += 1.0;
        }
    }
    partial[lid] = z;
    z = reduce(lid);
    partial[lid] = s;
    s = reduce(lid);
    partial[lid] = second;
    second = reduce_max(lid);
    partial[lid] = below;
    below = reduce(lid);
    partial[lid] = bad;
    bad = reduce(lid);
    if (bad > 0.0) {
        z = -1.0; // not a valid Σ exp (at least 1): the host refuses the row
    }
    if (lid == 0u) {
        let yb = P.y_off + row * 5u;
        y[yb] = f32(P.ne0 - first);
        y[yb + 1u] = z;
        y[yb + 2u] = s;
        y[yb + 3u] = second;
        y[yb + 4u] = below;
    }
}
