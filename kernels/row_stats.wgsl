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

// `row_stats_of` comes from row_stats_fn.wgsl, `partial`, `reduce` and `reduce_max` from
// reduce.wgsl, both appended to this source.

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * P.groups_x + wid.x;
    if (row >= P.rows) {
        return; // uniform across the workgroup
    }
    // Times 1: exactly the row.
    let r = row_stats_of(P.x_off + row * P.ne0, P.ne0, 1.0, lid);
    if (lid == 0u) {
        for (var j = 0u; j < 5u; j++) {
            y[P.y_off + row * 5u + j] = r[j];
        }
    }
}
