// y[:, i] = row ids[i] of a table in any loader's format (prepended: `w_load4`), as f32.
// A table uploaded in row chunks takes one dispatch per chunk: rows row0..row0 + rows live in
// this binding; ids outside it are left to the other chunks' dispatches.

struct Params {
    ne0: u32, n_ids: u32, ids_off: u32, y_off: u32,
    row0: u32, rows: u32, groups_x: u32, w_off: u32,
    w_row: u32, w_sc: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * P.groups_x + wid.x) * 256u + lid;
    let per_row = (P.ne0 + 3u) / 4u;
    if (t >= per_row * P.n_ids) {
        return;
    }
    let i = t / per_row;
    let k = (t % per_row) * 4u;
    let id = u32(ids[P.ids_off + i]);
    if (id < P.row0 || id >= P.row0 + P.rows) {
        return;
    }
    let v = w_load4(id - P.row0, k);
    for (var c = 0u; c < 4u; c++) {
        if (k + c < P.ne0) {
            y[P.y_off + i * P.ne0 + k + c] = v[c];
        }
    }
}
