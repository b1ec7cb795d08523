// The inner-product form of the metrics that have one (csd, w2, l2, kl), shared by the CPU kernels
// that run on the GEMM engine (pairwise distances, top-k):
//
//   distance(a_i, b_j) = row[i] + col[j] + alpha * <f_a(i), f_b(j)>
//
// with per-row feature vectors f and per-row scalars. csd and l2 use the means as features, read
// in place through the views; w2 and kl build feature matrices.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/parallel.h"
#include "cpu/strided.h"
#include "cpu/vec_math.h"
#include "pcmekit/metrics.h"
#include "pcmekit/view.h"

namespace pcmekit::cpu::inner {

// One side's inputs copied into contiguous row-major [rows, D] arrays, with var = exp(lv).
// Costs O(rows * D), negligible next to the pairwise work, and frees the kernels from strides.
template <typename T>
struct Side {
  int64_t rows = 0, dim = 0;
  std::vector<T> mu, lv, var;

  Side(const MatrixView& mean, const MatrixView& logvar, int num_threads)
      : rows(mean.rows), dim(mean.cols) {
    const size_t count = static_cast<size_t>(rows * dim);
    mu.resize(count);
    lv.assign(count, T(0));
    var.assign(count, T(1));
    const bool has_logvar = logvar.present();
    parallel_for(0, rows, 256, num_threads, [&](int64_t lo, int64_t hi, int) {
      for (int64_t r = lo; r < hi; ++r) {
        const size_t row = static_cast<size_t>(r * dim);
        for (int64_t c = 0; c < dim; ++c) {
          mu[row + c] = load<T>(mean, r, c);
          if (has_logvar) lv[row + c] = load<T>(logvar, r, c);
        }
        if (has_logvar) exp_array(lv.data() + row, var.data() + row, dim);
      }
    });
  }
  const T* mu_row(int64_t r) const { return mu.data() + r * dim; }
  const T* lv_row(int64_t r) const { return lv.data() + r * dim; }
  const T* var_row(int64_t r) const { return var.data() + r * dim; }
};

// Per-row features for the inner-product form, [rows, width] row-major, plus one row scalar.
template <typename T>
struct Features {
  int64_t width = 0;
  std::vector<T> data;   // [rows, width]
  std::vector<T> scalar; // [rows]
  GemmOperand<T> as_rows() const { return {data.data(), width, 1}; }     // [rows, width]
  GemmOperand<T> as_columns() const { return {data.data(), 1, width}; }  // [width, rows]
};

// Builds the features of one side. `query` selects the a-side (true) or b-side (false) form.
// (csd and l2 need none: their features are the means, read in place by forward_inner_product.)
//   w2:        f = [mu, sigma]                scalar = |mu|^2 + sum var
//   kl (a):    f = [var + mu^2, mu]           scalar = -1/2 sum lv - D/2
//   kl (b):    f = [1/(2 var), -mu/var]       scalar = 1/2 sum (mu^2/var + lv)
// so that  distance = scalar_a + scalar_b + alpha(metric) * <f_a, f_b>.
template <typename T>
Features<T> forward_features(const Side<T>& s, Metric metric, bool query, int num_threads) {
  Features<T> f;
  const int64_t d = s.dim;
  f.width = 2 * d;
  f.data.resize(static_cast<size_t>(s.rows * f.width));
  f.scalar.resize(static_cast<size_t>(s.rows));
  parallel_for(0, s.rows, 256, num_threads, [&](int64_t lo, int64_t hi, int) {
    for (int64_t r = lo; r < hi; ++r) {
      const T *mu = s.mu_row(r), *lv = s.lv_row(r), *var = s.var_row(r);
      T* out = f.data.data() + r * f.width;
      double acc = 0;  // row scalars in double: they are the large terms that later cancel
      for (int64_t c = 0; c < d; ++c) {
        switch (metric) {
          case Metric::W2:
            out[c] = mu[c];
            out[d + c] = std::sqrt(var[c]);
            acc += double(mu[c]) * mu[c] + var[c];
            break;
          case Metric::KL:
            if (query) {
              out[c] = var[c] + mu[c] * mu[c];
              out[d + c] = mu[c];
              acc += -0.5 * lv[c] - 0.5;
            } else {
              out[c] = T(0.5) / var[c];
              out[d + c] = -mu[c] / var[c];
              acc += 0.5 * (double(mu[c]) * mu[c] / var[c] + lv[c]);
            }
            break;
          default: break;
        }
      }
      f.scalar[static_cast<size_t>(r)] = static_cast<T>(acc);
    }
  });
  return f;
}

template <typename T>
T gemm_alpha(Metric metric) { return metric == Metric::KL ? T(1) : T(-2); }

// Row scalars |mu|^2 (+ sum var when logvar is present) read straight through the views.
template <typename T>
std::vector<T> squared_norms(const MatrixView& mean, const MatrixView& logvar, int num_threads) {
  std::vector<T> out(static_cast<size_t>(mean.rows));
  const bool rows_contiguous =
      mean.col_stride == 1 && (!logvar.present() || logvar.col_stride == 1);
  parallel_for(0, mean.rows, 256, num_threads, [&](int64_t lo, int64_t hi, int) {
    for (int64_t r = lo; r < hi; ++r) {
      if (rows_contiguous) {
        const T* mu = static_cast<const T*>(mean.data) + r * mean.row_stride;
        const T* lv =
            logvar.present() ? static_cast<const T*>(logvar.data) + r * logvar.row_stride : nullptr;
        out[static_cast<size_t>(r)] = static_cast<T>(sum_squares_exp(mu, lv, mean.cols));
        continue;
      }
      double acc = 0;
      for (int64_t c = 0; c < mean.cols; ++c) {
        const double m = load<T>(mean, r, c);
        acc += m * m;
        if (logvar.present()) acc += std::exp(double(load<T>(logvar, r, c)));
      }
      out[static_cast<size_t>(r)] = static_cast<T>(acc);
    }
  });
  return out;
}

inline bool has_inner_product_form(Metric metric) {
  return metric == Metric::CSD || metric == Metric::L2 || metric == Metric::W2 ||
         metric == Metric::KL;
}

// Everything a GEMM needs to produce distance(a_i, b_j) = row[i] + col[j] + alpha * (lhs @ rhs)[i, j].
template <typename T>
struct InnerProductForm {
  std::vector<T> row;       // [rows of a]
  std::vector<T> col;       // [rows of b]
  Features<T> fa, fb;       // owners of the feature matrices (empty for csd and l2)
  GemmOperand<T> lhs{}, rhs{};  // [rows of a, depth] and [depth, rows of b]; may point into fa, fb
  int64_t depth = 0;
  T alpha = T(-2);
};

template <typename T>
InnerProductForm<T> inner_product_form(const MatrixView& a_mean, const MatrixView& a_logvar,
                                       const MatrixView& b_mean, const MatrixView& b_logvar,
                                       Metric metric, int num_threads) {
  InnerProductForm<T> form;
  form.alpha = gemm_alpha<T>(metric);
  if (metric == Metric::CSD || metric == Metric::L2) {
    // The features are the means themselves: the GEMM reads them in place, no copies.
    const bool with_var = metric == Metric::CSD;
    form.row = squared_norms<T>(a_mean, with_var ? a_logvar : MatrixView{}, num_threads);
    form.col = squared_norms<T>(b_mean, with_var ? b_logvar : MatrixView{}, num_threads);
    form.depth = a_mean.cols;
    form.lhs = {static_cast<const T*>(a_mean.data), a_mean.row_stride, a_mean.col_stride};
    form.rhs = {static_cast<const T*>(b_mean.data), b_mean.col_stride, b_mean.row_stride};
    return form;
  }
  {
    const Side<T> a(a_mean, a_logvar, num_threads);
    form.fa = forward_features(a, metric, true, num_threads);
  }
  {
    const Side<T> b(b_mean, b_logvar, num_threads);
    form.fb = forward_features(b, metric, false, num_threads);
  }
  form.row = form.fa.scalar;
  form.col = form.fb.scalar;
  form.depth = form.fa.width;
  // Moving the form (returning it) moves the vectors, whose buffers stay where they are.
  form.lhs = form.fa.as_rows();
  form.rhs = form.fb.as_columns();
  return form;
}

}  // namespace pcmekit::cpu::inner
