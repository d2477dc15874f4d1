// Tree reductions over a 256-thread workgroup, appended to the source of the kernels that
// reduce rows (rms_norm.wgsl, row_stats.wgsl).

var<workgroup> partial: array<f32, 256>;

/// The sum of every thread's `partial` (all threads call it; ends with a barrier).
fn reduce(lid: u32) -> f32 {
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

/// The largest of every thread's `partial` (all threads call it; ends with a barrier).
fn reduce_max(lid: u32) -> f32 {
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            partial[lid] = max(partial[lid], partial[lid + stride]);
        }
        workgroupBarrier();
    }
    let top = partial[0];
    workgroupBarrier();
    return top;
}
