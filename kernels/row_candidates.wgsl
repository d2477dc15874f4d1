// What a sampled step needs of each row of logits x [ne0, rows], one workgroup per row:
// y[(5 + 2k) row ..] = the five statistics of row_stats.wgsl of the row times its inverse
// temperature t[t_off + row], then the ids (as f32) of k largest logits, then those logits
// (unscaled), the k in no particular order. 1 ≤ k ≤ ne0.
//
// The k largest are found by a radix select on the logits' order-preserving 32-bit keys: four
// rounds of a 256-bin histogram of one key byte among the keys that match the bytes chosen so
// far, each choosing the byte where the k-th largest lies. That leaves the k-th largest key T
// exactly and how many keys equal to T belong to the k (`need`); the collection pass then takes
// every key above T and the first `need` keys equal to T it meets.

struct Params {
    ne0: u32, rows: u32, x_off: u32, y_off: u32,
    groups_x: u32, k: u32, t_off: u32, _pad0: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> t: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// `row_stats_of` comes from row_stats_fn.wgsl, `partial`, `reduce` and `reduce_max` from
// reduce.wgsl, both appended to this source.

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> chosen: array<u32, 2>; // the key bytes chosen so far, and `need`
var<workgroup> taken: array<atomic<u32>, 2>; // slots given to keys above T, and equal to T

// Unsigned keys in the order of the floats (negative floats reversed below the positive ones).
fn key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * P.groups_x + wid.x;
    if (row >= P.rows) {
        return; // uniform across the workgroup
    }
    let xb = P.x_off + row * P.ne0;
    let yb = P.y_off + row * (5u + 2u * P.k);
    let r = row_stats_of(xb, P.ne0, t[P.t_off + row], lid);
    if (lid == 0u) {
        for (var j = 0u; j < 5u; j++) {
            y[yb + j] = r[j];
        }
        chosen[0] = 0u;
        chosen[1] = P.k;
        atomicStore(&taken[0], 0u);
        atomicStore(&taken[1], 0u);
    }
    var mask = 0u;
    for (var round = 0u; round < 4u; round++) {
        let shift = 24u - 8u * round;
        atomicStore(&hist[lid], 0u);
        workgroupBarrier();
        let prefix = chosen[0];
        for (var i = lid; i < P.ne0; i += 256u) {
            let kk = key(x[xb + i]);
            if ((kk & mask) == prefix) {
                atomicAdd(&hist[(kk >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        if (lid == 0u) {
            // From the top byte down: the byte holding the need-th largest of the matching keys.
            var need = chosen[1];
            var b = 255u;
            loop {
                let c = atomicLoad(&hist[b]);
                if (c >= need || b == 0u) {
                    break;
                }
                need -= c;
                b -= 1u;
            }
            chosen[0] = prefix | (b << shift);
            chosen[1] = need;
        }
        workgroupBarrier();
        mask |= 255u << shift;
    }
    let thr = chosen[0];
    let need = chosen[1];
    let above = P.k - need;
    for (var i = lid; i < P.ne0; i += 256u) {
        let v = x[xb + i];
        let kk = key(v);
        var slot = P.k;
        if (kk > thr) {
            slot = atomicAdd(&taken[0], 1u);
        } else if (kk == thr) {
            let e = atomicAdd(&taken[1], 1u);
            if (e < need) {
                slot = above + e;
            }
        }
        if (slot < P.k) {
            y[yb + 5u + slot] = f32(i);
            y[yb + 5u + P.k + slot] = v;
        }
    }
}
