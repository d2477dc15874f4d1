// Scaled dot-product attention, flash-style: q [HD, n_head, n_q], k and v [HD, n_head_kv, n_kv];
// query head h reads kv head h / (n_head / n_head_kv). Output [HD, n_head, n_q].
//
// One workgroup per (64 queries, head), one thread per query. Keys and values stream through
// workgroup memory TKV at a time; each thread keeps its query, a running maximum, a running
// sum and its output accumulator (online soft-max), so memory stays O(n) per head: the n x n
// scores are never stored. HD and TKV are substituted when the pipeline is made.

struct Params {
    n_q: u32, n_kv: u32, n_head: u32, n_head_kv: u32,
    q_off: u32, k_off: u32, v_off: u32, y_off: u32,
    scale: f32, causal: u32, _pad0: u32, _pad1: u32,
}

const HD: u32 = {{HD}}u;
const TKV: u32 = {{TKV}}u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> ks: array<f32, {{TKV_HD}}>;
var<workgroup> vs: array<f32, {{TKV_HD}}>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.y;
    let hk = h / (P.n_head / P.n_head_kv);
    let qi = wid.x * 64u + lid;
    let live = qi < P.n_q;
    var qv: array<f32, HD>;
    var acc: array<f32, HD>;
    if (live) {
        let qb = P.q_off + (qi * P.n_head + h) * HD;
        for (var d = 0u; d < HD; d++) {
            qv[d] = q[qb + d] * P.scale;
        }
    }
    var m = -3.0e38;
    var l = 0.0;
    for (var j0 = 0u; j0 < P.n_kv; j0 += TKV) {
        for (var e = lid; e < TKV * HD; e += 64u) {
            let j = j0 + e / HD;
            var kv = 0.0;
            var vv = 0.0;
            if (j < P.n_kv) {
                let o = (j * P.n_head_kv + hk) * HD + e % HD;
                kv = k[P.k_off + o];
                vv = v[P.v_off + o];
            }
            ks[e] = kv;
            vs[e] = vv;
        }
        workgroupBarrier();
        if (live) {
            let jn = min(TKV, P.n_kv - j0);
            for (var j = 0u; j < jn; j++) {
                if (P.causal != 0u && j0 + j > qi) {
                    break;
                }
                var s = 0.0;
                for (var d = 0u; d < HD; d++) {
                    s += qv[d] * ks[j * HD + d];
                }
                if (s > m) {
                    let corr = exp(m - s);
                    l *= corr;
                    for (var d = 0u; d < HD; d++) {
                        acc[d] *= corr;
                    }
                    m = s;
                }
                let p = exp(s - m);
                l += p;
                for (var d = 0u; d < HD; d++) {
                    acc[d] += p * vs[j * HD + d];
                }
            }
        }
        workgroupBarrier();
    }
    if (live) {
        let yb = P.y_off + (qi * P.n_head + h) * HD;
        let inv = 1.0 / l;
        for (var d = 0u; d < HD; d++) {
            y[yb + d] = acc[d] * inv;
        }
    }
}
