// The statistics of one row of `x` (a storage array of f32 named `x` in the kernel that appends
// this) scaled by `scale` > 0, for kernels with one 256-thread workgroup per row (row_stats.wgsl,
// row_candidates.wgsl): ne0 − i for the lowest index i of the row's maximum m, Σ exp(d),
// Σ exp(d)·d, the largest d below 0 (−1e30 if none), how many entries are below m, where
// d = (x − m)·scale (the maximum subtracted before scaling, as the host sampler scales a row).
// Σ exp is −1 when a value is a NaN or an infinity. Every thread calls it and gets the result.
// `partial`, `reduce` and `reduce_max` come from reduce.wgsl.

var<workgroup> idx: array<u32, 256>;

fn row_stats_of(xb: u32, ne0: u32, scale: f32, lid: u32) -> array<f32, 5> {
    // The maximum and its lowest index: each thread walks its ids upwards (strictly greater
    // keeps its first), then pairs join preferring the lower index on equal values.
    var m = -3.40282347e38; // the lowest f32 (an infinite constant is not valid WGSL)
    var mi = 0xffffffffu;
    for (var i = lid; i < ne0; i += 256u) {
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
    for (var i = lid; i < ne0; i += 256u) {
        let v = x[xb + i];
        let d = (v - m) * scale;
        // Non-finite values by their bits: WGSL lets a compiler assume floats are finite.
        bad += select(0.0, 1.0, (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u || (bitcast<u32>(d) & 0x7f800000u) == 0x7f800000u);
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
    return array<f32, 5>(f32(ne0 - first), z, s, second, below);
}
