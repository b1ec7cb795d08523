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
#include <utility>
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

inline bool has_inner_product_form(Metric metric) { return has_inner_product_metric(metric); }

// One side's part of the inner-product form: its row scalars and its GEMM operand, [rows, depth]
// for the a side (lhs) and [depth, rows] for the b side (rhs). csd and l2 read the means in place;
// w2 and kl point the operand into `features`, which owns them (moving a SideForm keeps them where
// they are).
template <typename T>
struct SideForm {
  std::vector<T> scalar;  // [rows]
  Features<T> features;   // empty for csd and l2
  GemmOperand<T> op{};
  int64_t depth = 0;
};

template <typename T>
SideForm<T> side_form(const MatrixView& mean, const MatrixView& logvar, Metric metric, bool a_side,
                      int num_threads) {
  SideForm<T> s;
  if (metric == Metric::CSD || metric == Metric::L2) {
    // The features are the means themselves: the GEMM reads them in place, no copies.
    s.scalar = squared_norms<T>(mean, metric == Metric::CSD ? logvar : MatrixView{}, num_threads);
    s.depth = mean.cols;
    const T* data = static_cast<const T*>(mean.data);
    s.op = a_side ? GemmOperand<T>{data, mean.row_stride, mean.col_stride}
                  : GemmOperand<T>{data, mean.col_stride, mean.row_stride};
    return s;
  }
  {
    const Side<T> side(mean, logvar, num_threads);
    s.features = forward_features(side, metric, a_side, num_threads);
  }
  s.scalar = std::move(s.features.scalar);
  s.depth = s.features.width;
  s.op = a_side ? s.features.as_rows() : s.features.as_columns();
  return s;
}

// Everything a GEMM needs to produce distance(a_i, b_j) = row[i] + col[j] + alpha * (lhs @ rhs)[i, j].
template <typename T>
struct InnerProductForm {
  SideForm<T> a, b;
  const std::vector<T>& row;  // [rows of a]
  const std::vector<T>& col;  // [rows of b]
  const GemmOperand<T>& lhs;  // [rows of a, depth]
  const GemmOperand<T>& rhs;  // [depth, rows of b]
  int64_t depth = 0;
  T alpha = T(-2);

  InnerProductForm(SideForm<T> a_side, SideForm<T> b_side, T alpha_)
      : a(std::move(a_side)), b(std::move(b_side)), row(a.scalar), col(b.scalar), lhs(a.op),
        rhs(b.op), depth(a.depth), alpha(alpha_) {}
  InnerProductForm(const InnerProductForm&) = delete;
  InnerProductForm& operator=(const InnerProductForm&) = delete;
};

template <typename T>
InnerProductForm<T> inner_product_form(const MatrixView& a_mean, const MatrixView& a_logvar,
                                       const MatrixView& b_mean, const MatrixView& b_logvar,
                                       Metric metric, int num_threads) {
  // Guaranteed copy elision (C++17): the form is built in the caller's variable.
  return InnerProductForm<T>(side_form<T>(a_mean, a_logvar, metric, true, num_threads),
                             side_form<T>(b_mean, b_logvar, metric, false, num_threads),
                             gemm_alpha<T>(metric));
}

}  // namespace pcmekit::cpu::inner
