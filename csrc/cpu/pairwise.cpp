// CPU kernels of the pairwise distance op.
//
// Two engines:
//  * inner-product form (csd, w2, l2, kl): each metric is  row term + column term + alpha * <f_a, f_b>
//    for per-row feature vectors f, so the O(N M D) work is one GEMM (cpu/gemm.h) with the row and
//    column terms added in its epilogue; backward is two more GEMMs, G @ F_b and G^T @ F_a.
//  * direct form (bhattacharyya, elk, inclusion): a blocked loop over (i, j, d) with the per-dimension term of
//    metrics.h; backward accumulates the term's partial derivatives the same way.
// Neither materialises anything of size N x M x D.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/inner_product.h"
#include "cpu/memory.h"
#include "cpu/parallel.h"
#include "cpu/strided.h"
#include "cpu/vec_math.h"
#include "pcmekit/pairwise.h"

namespace pcmekit::cpu {
namespace {

using inner::Features;
using inner::InnerProductForm;
using inner::Side;
using inner::has_inner_product_form;
using inner::inner_product_form;


template <typename T>
void forward_inner_product(const PairwiseForwardParams& p) {
  const int nt = p.num_threads;
  const MatrixView& out = p.out;
  const InnerProductForm<T> form =
      inner_product_form<T>(p.a_mean, p.a_logvar, p.b_mean, p.b_logvar, p.metric, nt);
  const T alpha = form.alpha;
  const T* ra = form.row.data();
  const T* cb = form.col.data();
  auto epilogue = [&](int64_t r, int64_t c0, int64_t count, const T* acc) {
    T* dst = static_cast<T*>(out.data) + r * out.row_stride + c0 * out.col_stride;
    const T row = ra[r];
    // The expanded form can dip below zero by rounding where the true distance is ~0.
    if (out.col_stride == 1) {
      for (int64_t t = 0; t < count; ++t) dst[t] = std::max(row + cb[c0 + t] + alpha * acc[t], T(0));
    } else {
      for (int64_t t = 0; t < count; ++t)
        dst[t * out.col_stride] = std::max(row + cb[c0 + t] + alpha * acc[t], T(0));
    }
  };
  gemm<T>(p.a_mean.rows, p.b_mean.rows, form.depth, form.lhs, form.rhs, epilogue, nt);
}

template <typename T, typename Term>
void forward_direct(const PairwiseForwardParams& p, Term) {
  const int nt = p.num_threads;
  const Side<T> a(p.a_mean, p.a_logvar, nt), b(p.b_mean, p.b_logvar, nt);
  const int64_t n = a.rows, m = b.rows, d = a.dim;
  const T offset = Term::template offset<T>(d);
  constexpr int64_t kBlockB = 32;  // b rows kept hot in L1/L2 while a rows stream past
  parallel_for(0, n, 4, nt, [&](int64_t lo, int64_t hi, int) {
    for (int64_t j0 = 0; j0 < m; j0 += kBlockB) {
      const int64_t j1 = std::min(m, j0 + kBlockB);
      for (int64_t i = lo; i < hi; ++i) {
        const T *ma = a.mu_row(i), *la = a.lv_row(i), *va = a.var_row(i);
        for (int64_t j = j0; j < j1; ++j) {
          const T *mb = b.mu_row(j), *lb = b.lv_row(j), *vb = b.var_row(j);
          T acc = 0;
          for (int64_t c = 0; c < d; ++c) acc += Term::value(ma[c], la[c], va[c], mb[c], lb[c], vb[c]);
          at<T>(p.out, i, j) = acc + offset;
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward.

// w2 and kl: feature matrix [rows, width + 1] for the backward GEMMs; the last column is all
// ones, so the GEMM also yields the row (or column) sums of the incoming gradient.
//   w2: [mu, sigma]
//   kl, b-side (for G @ F_b):    [1/var, mu/var]
//   kl, a-side (for G^T @ F_a):  [mu, var + mu^2]
template <typename T>
Features<T> backward_features(const Side<T>& s, Metric metric, bool query, int num_threads) {
  Features<T> f;
  const int64_t d = s.dim;
  const int64_t k = 2 * d;
  f.width = k + 1;
  f.data.resize(static_cast<size_t>(s.rows * f.width));
  parallel_for(0, s.rows, 256, num_threads, [&](int64_t lo, int64_t hi, int) {
    for (int64_t r = lo; r < hi; ++r) {
      const T *mu = s.mu_row(r), *var = s.var_row(r);
      T* out = f.data.data() + r * f.width;
      for (int64_t c = 0; c < d; ++c) {
        switch (metric) {
          case Metric::W2: out[c] = mu[c]; out[d + c] = std::sqrt(var[c]); break;
          case Metric::KL:
            if (query) {
              out[c] = mu[c];
              out[d + c] = var[c] + mu[c] * mu[c];
            } else {
              out[c] = T(1) / var[c];
              out[d + c] = mu[c] / var[c];
            }
            break;
          default: break;
        }
      }
      out[k] = T(1);
    }
  });
  return f;
}

// Product [rows, width] = G-or-G^T @ features, stored plainly.
template <typename T>
std::vector<T> gradient_product(const MatrixView& g, bool transpose, const Features<T>& f,
                                int num_threads) {
  const int64_t rows = transpose ? g.cols : g.rows;
  const int64_t inner = transpose ? g.rows : g.cols;
  std::vector<T> out(static_cast<size_t>(rows * f.width));
  const GemmOperand<T> lhs = transpose
      ? GemmOperand<T>{static_cast<const T*>(g.data), g.col_stride, g.row_stride}
      : GemmOperand<T>{static_cast<const T*>(g.data), g.row_stride, g.col_stride};
  T* dst = out.data();
  const int64_t width = f.width;
  auto epilogue = [&](int64_t r, int64_t c0, int64_t count, const T* acc) {
    std::copy(acc, acc + count, dst + r * width + c0);
  };
  gemm<T>(rows, width, inner, lhs, f.as_rows(), epilogue, num_threads);
  return out;
}

// Turns P = G @ F_other (or G^T @ F_other) into this side's gradients. `sum` is P's last column.
template <typename T>
void combine_gradients(const Side<T>& s, const std::vector<T>& prod, int64_t width, Metric metric,
                       bool query, const MatrixView& grad_mean, const MatrixView& grad_logvar,
                       int num_threads) {
  const int64_t d = s.dim;
  parallel_for(0, s.rows, 64, num_threads, [&](int64_t lo, int64_t hi, int) {
    for (int64_t r = lo; r < hi; ++r) {
      const T *mu = s.mu_row(r), *var = s.var_row(r);
      const T* p = prod.data() + r * width;
      const T sum = p[width - 1];
      for (int64_t c = 0; c < d; ++c) {
        T gm = 0, gl = 0;
        switch (metric) {
          case Metric::W2: {
            const T sigma = std::sqrt(var[c]);
            gm = T(2) * (mu[c] * sum - p[c]);
            gl = sigma * (sigma * sum - p[d + c]);
            break;
          }
          case Metric::KL:
            if (query) {  // p = [G @ 1/var_b, G @ mu_b/var_b]
              gm = mu[c] * p[c] - p[d + c];
              gl = T(0.5) * (var[c] * p[c] - sum);
            } else {      // p = [G^T @ mu_a, G^T @ (var_a + mu_a^2)]
              const T inv = T(1) / var[c];
              gm = (mu[c] * sum - p[c]) * inv;
              gl = T(0.5) * (sum - (p[d + c] - T(2) * mu[c] * p[c] + mu[c] * mu[c] * sum) * inv);
            }
            break;
          default: break;
        }
        if (grad_mean.present()) at<T>(grad_mean, r, c) = gm;
        if (grad_logvar.present()) at<T>(grad_logvar, r, c) = gl;
      }
    }
  });
}

// csd and l2 read the means in place. With s = G's row sums and t = its column sums,
//   d/d mu_a = 2 (mu_a s - G @ mu_b),       d/d lv_a = var_a s       (csd)
//   d/d mu_b = 2 (mu_b t - G^T @ mu_a),     d/d lv_b = var_b t
// s and t come from one pass over G (summed in double); each product is a GEMM over the other
// side's means, read through their strides, whose epilogue writes the mean gradient itself.

// Row and column sums of g, in double.
template <typename T>
void gradient_sums(const MatrixView& g, std::vector<double>& row_sums,
                   std::vector<double>& col_sums, int num_threads) {
  const int64_t n = g.rows, m = g.cols;
  row_sums.assign(static_cast<size_t>(n), 0.0);
  col_sums.assign(static_cast<size_t>(m), 0.0);
  const int threads = static_cast<int>(std::min<int64_t>(resolve_threads(num_threads),
                                                         std::max<int64_t>(1, n * m >> 16)));
  std::vector<std::vector<double>> partial(static_cast<size_t>(threads));
  parallel_for(0, n, 1, threads, [&](int64_t lo, int64_t hi, int worker) {
    std::vector<double>& cols = partial[static_cast<size_t>(worker)];
    cols.assign(static_cast<size_t>(m), 0.0);
    double* col = cols.data();
    for (int64_t r = lo; r < hi; ++r) {
      double acc = 0;
      if (g.col_stride == 1) {
        // Two loops: the column sums vectorise, and the row sum runs on eight independent
        // accumulators instead of one serial chain of adds (4 cycles an element).
        const T* src = static_cast<const T*>(g.data) + r * g.row_stride;
        for (int64_t c = 0; c < m; ++c) col[c] += double(src[c]);
        double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t c = 0;
        for (; c + 8 <= m; c += 8)
          for (int l = 0; l < 8; ++l) part[l] += double(src[c + l]);
        for (; c < m; ++c) acc += double(src[c]);
        acc += ((part[0] + part[4]) + (part[1] + part[5])) +
               ((part[2] + part[6]) + (part[3] + part[7]));
      } else {
        for (int64_t c = 0; c < m; ++c) {
          const double v = load<T>(g, r, c);
          acc += v;
          cols[static_cast<size_t>(c)] += v;
        }
      }
      row_sums[static_cast<size_t>(r)] = acc;
    }
  });
  for (const std::vector<double>& cols : partial)
    for (size_t c = 0; c < cols.size(); ++c) col_sums[c] += cols[c];
}

// grad_mean = 2 (self_mean * sums - G-or-G^T @ other_mean), the product from the GEMM engine.
template <typename T>
void mean_gradient(const MatrixView& g, bool transpose, const MatrixView& self_mean,
                   const MatrixView& other_mean, const std::vector<double>& sums,
                   const MatrixView& grad_mean, int num_threads) {
  if (!grad_mean.present()) return;
  const int64_t rows = transpose ? g.cols : g.rows;
  const int64_t inner = transpose ? g.rows : g.cols;
  const GemmOperand<T> lhs = transpose
      ? GemmOperand<T>{static_cast<const T*>(g.data), g.col_stride, g.row_stride}
      : GemmOperand<T>{static_cast<const T*>(g.data), g.row_stride, g.col_stride};
  const GemmOperand<T> rhs{static_cast<const T*>(other_mean.data), other_mean.row_stride,
                           other_mean.col_stride};
  auto epilogue = [&](int64_t r, int64_t c0, int64_t count, const T* acc) {
    const T s = static_cast<T>(sums[static_cast<size_t>(r)]);
    for (int64_t t = 0; t < count; ++t)
      at<T>(grad_mean, r, c0 + t) = T(2) * (load<T>(self_mean, r, c0 + t) * s - acc[t]);
  };
  gemm<T>(rows, self_mean.cols, inner, lhs, rhs, epilogue, num_threads);
}

// grad_logvar = exp(logvar) * sums, row by row.
template <typename T>
void logvar_gradient(const MatrixView& logvar, const std::vector<double>& sums,
                     const MatrixView& grad_logvar, int num_threads) {
  if (!grad_logvar.present()) return;
  const int64_t d = logvar.cols;
  parallel_for(0, logvar.rows, 256, num_threads, [&](int64_t lo, int64_t hi, int) {
    const bool contiguous = logvar.col_stride == 1 && grad_logvar.col_stride == 1;
    std::vector<T> row(contiguous ? 0 : static_cast<size_t>(d));
    for (int64_t r = lo; r < hi; ++r) {
      const T s = static_cast<T>(sums[static_cast<size_t>(r)]);
      if (contiguous) {
        T* dst = static_cast<T*>(grad_logvar.data) + r * grad_logvar.row_stride;
        exp_array(static_cast<const T*>(logvar.data) + r * logvar.row_stride, dst, d);
        for (int64_t c = 0; c < d; ++c) dst[c] *= s;
        continue;
      }
      for (int64_t c = 0; c < d; ++c) row[static_cast<size_t>(c)] = load<T>(logvar, r, c);
      exp_array(row.data(), row.data(), d);
      for (int64_t c = 0; c < d; ++c) at<T>(grad_logvar, r, c) = row[static_cast<size_t>(c)] * s;
    }
  });
}

template <typename T>
void backward_means_in_place(const PairwiseBackwardParams& p) {
  const int nt = p.num_threads;
  std::vector<double> row_sums, col_sums;
  gradient_sums<T>(p.grad_out, row_sums, col_sums, nt);
  mean_gradient<T>(p.grad_out, false, p.a_mean, p.b_mean, row_sums, p.grad_a_mean, nt);
  mean_gradient<T>(p.grad_out, true, p.b_mean, p.a_mean, col_sums, p.grad_b_mean, nt);
  if (p.metric == Metric::CSD) {
    logvar_gradient<T>(p.a_logvar, row_sums, p.grad_a_logvar, nt);
    logvar_gradient<T>(p.b_logvar, col_sums, p.grad_b_logvar, nt);
  }
}

template <typename T>
void backward_inner_product(const PairwiseBackwardParams& p) {
  if (p.metric == Metric::CSD || p.metric == Metric::L2) return backward_means_in_place<T>(p);
  const int nt = p.num_threads;
  const Side<T> a(p.a_mean, p.a_logvar, nt), b(p.b_mean, p.b_logvar, nt);
  if (p.grad_a_mean.present() || p.grad_a_logvar.present()) {
    const Features<T> fb = backward_features(b, p.metric, false, nt);
    const std::vector<T> prod = gradient_product(p.grad_out, false, fb, nt);
    combine_gradients(a, prod, fb.width, p.metric, true, p.grad_a_mean, p.grad_a_logvar, nt);
  }
  if (p.grad_b_mean.present() || p.grad_b_logvar.present()) {
    const Features<T> fa = backward_features(a, p.metric, true, nt);
    const std::vector<T> prod = gradient_product(p.grad_out, true, fa, nt);
    combine_gradients(b, prod, fa.width, p.metric, false, p.grad_b_mean, p.grad_b_logvar, nt);
  }
}

// grad_x[r, c] = sum over the other side's rows o of g(r, o) * dTerm/dx, for one side.
template <typename T, typename Term>
void backward_direct_side(const Side<T>& self, const Side<T>& other, const MatrixView& g,
                          bool query, const MatrixView& grad_mean, const MatrixView& grad_logvar,
                          int num_threads, Term) {
  if (!grad_mean.present() && !grad_logvar.present()) return;
  const int64_t d = self.dim;
  parallel_for(0, self.rows, 4, num_threads, [&](int64_t lo, int64_t hi, int) {
    std::vector<T> gm(static_cast<size_t>(d)), gl(static_cast<size_t>(d));
    for (int64_t r = lo; r < hi; ++r) {
      std::fill(gm.begin(), gm.end(), T(0));
      std::fill(gl.begin(), gl.end(), T(0));
      const T *m0 = self.mu_row(r), *l0 = self.lv_row(r), *v0 = self.var_row(r);
      for (int64_t o = 0; o < other.rows; ++o) {
        const T w = query ? load<T>(g, r, o) : load<T>(g, o, r);
        const T *m1 = other.mu_row(o), *l1 = other.lv_row(o), *v1 = other.var_row(o);
        for (int64_t c = 0; c < d; ++c) {
          if (query) {
            const TermGrad<T> t = Term::grad(m0[c], l0[c], v0[c], m1[c], l1[c], v1[c]);
            gm[c] += w * t.d_mu_a;
            gl[c] += w * t.d_lv_a;
          } else {
            const TermGrad<T> t = Term::grad(m1[c], l1[c], v1[c], m0[c], l0[c], v0[c]);
            gm[c] += w * t.d_mu_b;
            gl[c] += w * t.d_lv_b;
          }
        }
      }
      for (int64_t c = 0; c < d; ++c) {
        if (grad_mean.present()) at<T>(grad_mean, r, c) = gm[static_cast<size_t>(c)];
        if (grad_logvar.present()) at<T>(grad_logvar, r, c) = gl[static_cast<size_t>(c)];
      }
    }
  });
}

template <typename T, typename Term>
void backward_direct(const PairwiseBackwardParams& p, Term term) {
  const int nt = p.num_threads;
  const Side<T> a(p.a_mean, p.a_logvar, nt), b(p.b_mean, p.b_logvar, nt);
  backward_direct_side(a, b, p.grad_out, true, p.grad_a_mean, p.grad_a_logvar, nt, term);
  backward_direct_side(b, a, p.grad_out, false, p.grad_b_mean, p.grad_b_logvar, nt, term);
}

template <typename T>
void forward_typed(const PairwiseForwardParams& p) {
  if (has_inner_product_form(p.metric)) return forward_inner_product<T>(p);
  visit_metric(p.metric, [&](auto term) { forward_direct<T>(p, term); });
}

template <typename T>
void backward_typed(const PairwiseBackwardParams& p) {
  if (has_inner_product_form(p.metric)) return backward_inner_product<T>(p);
  visit_metric(p.metric, [&](auto term) { backward_direct<T>(p, term); });
}

}  // namespace

void pairwise_forward(const PairwiseForwardParams& p) {
  if (p.out.empty()) return;
  if (p.out.col_stride == 1 && p.out.row_stride == p.out.cols)  // one contiguous block
    advise_huge_pages(p.out.data, p.out.rows * p.out.cols * (p.a_mean.dtype == DType::Float64 ? 8 : 4));
  if (p.a_mean.dtype == DType::Float64) return forward_typed<double>(p);
  forward_typed<float>(p);
}

void pairwise_backward(const PairwiseBackwardParams& p) {
  if (p.a_mean.dtype == DType::Float64) return backward_typed<double>(p);
  backward_typed<float>(p);
}

}  // namespace pcmekit::cpu
