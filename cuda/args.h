// Host-side glue shared by the CPU and CUDA launchers: unpack and check the op arguments
// into the plain structs of cuda/include/nfrecon/. The Python side (nfrecon/ops/) has already
// checked shapes, dtypes and limits with user-facing messages; these checks only stop a
// direct call of torch.ops.nfrecon.* from crashing the process.
#pragma once

#include <ATen/Functions.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "nfrecon/hashgrid.h"
#include "nfrecon/mlp.h"
#include "nfrecon/cond_march.h"
#include "nfrecon/naf_march.h"

namespace nfrecon {

// grid = [log2_hashmap_size, n_features, n_levels, res..., dense..., offset...]
inline GridSpec grid_spec(c10::IntArrayRef grid, const at::Tensor& table) {
  TORCH_CHECK(grid.size() >= 3, "nfrecon: grid spec too short");
  GridSpec g{};
  const int64_t log2_size = grid[0];
  g.n_features = int(grid[1]);
  g.n_levels = int(grid[2]);
  TORCH_CHECK(g.n_levels >= 1 && g.n_levels <= kMaxLevels, "nfrecon: n_levels must be in [1, ", kMaxLevels, "]");
  TORCH_CHECK(int64_t(grid.size()) == 3 + 3 * g.n_levels, "nfrecon: grid spec has the wrong length");
  TORCH_CHECK(log2_size >= 1 && log2_size <= 30, "nfrecon: log2_hashmap_size must be in [1, 30]");
  TORCH_CHECK(g.width() <= kMaxEncoding, "nfrecon: encoding wider than ", kMaxEncoding);
  g.mask = uint32_t((int64_t(1) << log2_size) - 1);
  TORCH_CHECK(table.dim() == 2 && table.size(1) == g.n_features, "nfrecon: table must be (rows, n_features)");
  for (int l = 0; l < g.n_levels; ++l) {
    g.res[l] = int(grid[3 + l]);
    g.dense[l] = int(grid[3 + g.n_levels + l]);
    g.offset[l] = int(grid[3 + 2 * g.n_levels + l]);
    const int64_t n = g.res[l];
    const int64_t rows = g.dense[l] ? (n + 1) * (n + 1) * (n + 1) : (int64_t(1) << log2_size);
    TORCH_CHECK(n >= 1 && g.offset[l] >= 0 && g.offset[l] + rows <= table.size(0),
                "nfrecon: level ", l, " does not fit the table");
  }
  return g;
}

// The MLP's parameters as a view; wt receives the transposed weights (kept alive by the caller).
// mlp = [activation, out_activation, skip_0, ..., skip_{L-1}]
// max_out: the widest output allowed (1 for a field; kMaxFilm for a modulation network).
template <typename T>
MLPView<T> mlp_view(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases,
                    c10::IntArrayRef mlp, int in_dim, std::vector<at::Tensor>& wt, int max_out = 1) {
  const int n = int(weights.size());
  TORCH_CHECK(n >= 1 && n <= kMaxLayers, "nfrecon: the MLP must have 1 to ", kMaxLayers, " layers");
  TORCH_CHECK(int(biases.size()) == n && int(mlp.size()) == 2 + n, "nfrecon: MLP spec does not match its weights");
  MLPView<T> m{};
  m.n_layers = n;
  m.in_dim = in_dim;
  m.act = int(mlp[0]);
  m.out_act = int(mlp[1]);
  int64_t offset = 0;
  int prev = in_dim;
  wt.clear();
  for (int i = 0; i < n; ++i) {
    const at::Tensor& w = weights[i];
    m.skip[i] = int(mlp[2 + i]);
    const int fan = (i == 0 ? 0 : prev) + ((i == 0 || m.skip[i]) ? in_dim : 0);
    TORCH_CHECK(w.dim() == 2 && w.size(1) == fan && w.is_contiguous(), "nfrecon: MLP layer ", i, " has the wrong shape");
    TORCH_CHECK(biases[i].numel() == w.size(0) && biases[i].is_contiguous(), "nfrecon: MLP bias ", i, " has the wrong size");
    TORCH_CHECK(i == n - 1 || w.size(0) <= kMaxWidth, "nfrecon: MLP wider than ", kMaxWidth);
    m.width[i] = int(w.size(0));
    m.fan_in[i] = fan;
    wt.push_back(w.t().contiguous());
    m.W[i] = w.data_ptr<T>();
    m.Wt[i] = wt.back().data_ptr<T>();
    m.b[i] = biases[i].data_ptr<T>();
    m.w_offset[i] = offset;
    offset += w.numel();
    m.b_offset[i] = offset;
    offset += biases[i].numel();
    prev = m.width[i];
  }
  TORCH_CHECK(m.width[n - 1] >= 1 && m.width[n - 1] <= max_out, "nfrecon: the MLP has more than ", max_out,
              " outputs");
  return m;
}

// The widest hidden layer (the template width W of the per-point buffers).
template <typename T> int max_hidden(const MLPView<T>& m) {
  int w = 1;
  for (int i = 0; i + 1 < m.n_layers; ++i) w = m.width[i] > w ? m.width[i] : w;
  return w;
}

// A march's bin offsets (rays, n_samples), or null for midpoints when the tensor is empty.
template <typename T>
const T* offsets_ptr(const at::Tensor& offsets, int64_t n_rays, int n_samples) {
  if (offsets.numel() == 0) return nullptr;
  TORCH_CHECK(offsets.dim() == 2 && offsets.size(0) == n_rays && offsets.size(1) == n_samples &&
                  offsets.is_contiguous(), "nfrecon: offsets must be (rays, n_samples) or empty");
  return offsets.data_ptr<T>();
}

// box = [lo(3), hi(3), field_min(3), field_size(3)] mm; march = [det_rows, det_cols, n_samples]
template <typename T>
MarchSpec<T> march_spec(const at::Tensor& geometry, c10::ArrayRef<double> box, double mu_max, c10::IntArrayRef march) {
  TORCH_CHECK(box.size() == 12 && march.size() == 3, "nfrecon: march spec has the wrong length");
  TORCH_CHECK(geometry.dim() == 2 && geometry.size(1) == 12 && geometry.scalar_type() == at::kDouble &&
                  geometry.is_contiguous(), "nfrecon: geometry must be (views, 12) float64");
  MarchSpec<T> s{};
  s.geom = geometry.data_ptr<double>();
  s.det_rows = int(march[0]);
  s.det_cols = int(march[1]);
  s.n_samples = int(march[2]);
  TORCH_CHECK(s.det_rows >= 1 && s.det_cols >= 1 && s.n_samples >= 1, "nfrecon: bad detector or sample count");
  for (int k = 0; k < 3; ++k) {
    s.lo[k] = T(box[k]);
    s.hi[k] = T(box[3 + k]);
    s.field_min[k] = T(box[6 + k]);
    s.field_size[k] = T(box[9 + k]);
  }
  s.mu_max = T(mu_max);
  return s;
}

// The MLP's parameter-gradient buffer split back into one tensor per weight and bias.
inline std::vector<at::Tensor> split_params(const at::Tensor& flat, const std::vector<at::Tensor>& weights,
                                            const std::vector<at::Tensor>& biases) {
  std::vector<at::Tensor> out;
  std::vector<at::Tensor> grad_b;
  int64_t offset = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    out.push_back(flat.narrow(0, offset, weights[i].numel()).view(weights[i].sizes()));
    offset += weights[i].numel();
    grad_b.push_back(flat.narrow(0, offset, biases[i].numel()).view(biases[i].sizes()));
    offset += biases[i].numel();
  }
  out.insert(out.end(), grad_b.begin(), grad_b.end());
  return out;
}

// The conditioned march's gradients from its flat buffer [backbone table, backbone MLP,
// modulation table, modulation MLP] (the backbone part absent without backbone_grad):
// [btable, bW..., bb..., mtable, mW..., mb...], empty tensors for the backbone when absent.
inline std::vector<at::Tensor> cond_gradients(const at::Tensor& flat, bool backbone_grad, const at::Tensor& btable,
                                              const std::vector<at::Tensor>& bw, const std::vector<at::Tensor>& bb,
                                              const at::Tensor& mtable, const std::vector<at::Tensor>& mw,
                                              const std::vector<at::Tensor>& mb);

inline int64_t n_params(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases) {
  int64_t n = 0;
  for (size_t i = 0; i < weights.size(); ++i) n += weights[i].numel() + biases[i].numel();
  return n;
}

}  // namespace nfrecon

namespace nfrecon {

// Calls f(std::integral_constant<int, W>) with the smallest W in {32, 64, 128, 256} >= width:
// the per-point buffers of the MLPs are sized at compile time.
template <typename F> void with_buffer_width(int width, F&& f) {
  TORCH_CHECK(width <= kMaxWidth, "nfrecon: MLP wider than ", kMaxWidth);
  if (width <= 32) return f(std::integral_constant<int, 32>{});
  if (width <= 64) return f(std::integral_constant<int, 64>{});
  if (width <= 128) return f(std::integral_constant<int, 128>{});
  return f(std::integral_constant<int, kMaxWidth>{});
}

// Whether every hidden layer of m is exactly w wide.
template <typename T> bool uniform_width(const MLPView<T>& m, int w) {
  bool u = m.n_layers > 1;
  for (int i = 0; i + 1 < m.n_layers; ++i) u = u && m.width[i] == w;
  return u;
}

// Calls f(integral_constant W, bool_constant U): W as with_buffer_width for m's widest hidden
// layer, U = every hidden layer is W wide, so that the common uniform case (NAF: 32, CondCBNT:
// 128) gets loops of a compile-time length.
template <typename T, typename F> void with_width(const MLPView<T>& m, F&& f) {
  with_buffer_width(max_hidden(m), [&](auto wc) {
    if (uniform_width(m, decltype(wc)::value)) return f(wc, std::true_type{});
    return f(wc, std::false_type{});
  });
}

// with_width for two MLPs sharing one buffer width W (the conditioned march): calls
// f(integral_constant W, bool_constant Ua, bool_constant Ub).
template <typename T, typename F> void with_widths(const MLPView<T>& a, const MLPView<T>& b, F&& f) {
  with_buffer_width(std::max(max_hidden(a), max_hidden(b)), [&](auto wc) {
    constexpr int W = decltype(wc)::value;
    const bool ua = uniform_width(a, W), ub = uniform_width(b, W);
    if (ua && ub) return f(wc, std::true_type{}, std::true_type{});
    if (ua) return f(wc, std::true_type{}, std::false_type{});
    if (ub) return f(wc, std::false_type{}, std::true_type{});
    return f(wc, std::false_type{}, std::false_type{});
  });
}

inline std::vector<at::Tensor> cond_gradients(const at::Tensor& flat, bool backbone_grad, const at::Tensor& btable,
                                              const std::vector<at::Tensor>& bw, const std::vector<at::Tensor>& bb,
                                              const at::Tensor& mtable, const std::vector<at::Tensor>& mw,
                                              const std::vector<at::Tensor>& mb) {
  const int64_t nbt = backbone_grad ? btable.numel() : 0, nbp = backbone_grad ? n_params(bw, bb) : 0;
  const int64_t nmt = mtable.numel();
  std::vector<at::Tensor> out;
  const at::Tensor none = at::empty({0}, flat.options());
  out.push_back(backbone_grad ? flat.narrow(0, 0, nbt).view(btable.sizes()) : none);
  const std::vector<at::Tensor> bparams =
      backbone_grad ? split_params(flat.narrow(0, nbt, nbp), bw, bb) : std::vector<at::Tensor>(2 * bw.size(), none);
  out.insert(out.end(), bparams.begin(), bparams.end());
  out.push_back(flat.narrow(0, nbt + nbp, nmt).view(mtable.sizes()));
  const std::vector<at::Tensor> mparams = split_params(flat.narrow(0, nbt + nbp + nmt, flat.numel() - nbt - nbp - nmt), mw, mb);
  out.insert(out.end(), mparams.begin(), mparams.end());
  return out;
}

// The two networks' views; wt keeps the transposed weights alive.
template <typename T>
struct CondArgs {
  std::vector<at::Tensor> bw, bb, mw, mb, wt_b, wt_m;
  CondNets<T> nets;
};

template <typename T>
CondArgs<T> cond_args(const at::Tensor& btable, at::TensorList bweights, at::TensorList bbiases, c10::IntArrayRef bgrid,
                   c10::IntArrayRef bmlp, const at::Tensor& mtable, at::TensorList mweights, at::TensorList mbiases,
                   c10::IntArrayRef mgrid, c10::IntArrayRef mmlp) {
  TORCH_CHECK(btable.scalar_type() == mtable.scalar_type(), "nfrecon: both tables must have one dtype");
  CondArgs<T> a;
  a.bw = bweights.vec();
  a.bb = bbiases.vec();
  a.mw = mweights.vec();
  a.mb = mbiases.vec();
  a.nets.bg = grid_spec(bgrid, btable);
  a.nets.mg = grid_spec(mgrid, mtable);
  a.nets.bm = mlp_view<T>(a.bw, a.bb, bmlp, a.nets.bg.width(), a.wt_b);
  a.nets.mm = mlp_view<T>(a.mw, a.mb, mmlp, a.nets.mg.width(), a.wt_m, kMaxFilm);
  a.nets.btable = btable.data_ptr<T>();
  a.nets.mtable = mtable.data_ptr<T>();
  int film = 0;
  for (int i = 0; i + 1 < a.nets.bm.n_layers; ++i) film += 2 * a.nets.bm.width[i];
  TORCH_CHECK(a.nets.mm.width[a.nets.mm.n_layers - 1] == film, "nfrecon: the modulation must output ", film,
              " FiLM values (2 x the backbone's hidden widths)");
  return a;
}

}  // namespace nfrecon
