#include "runtime/cpu/svd.h"

// GCC 12 reports a maybe-uninitialized variable deep inside Eigen's triangular
// solver when BDCSVD is instantiated; Eigen initialises it on every path.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/SVD>

#include "runtime/error.h"

namespace peft::cpu {

void svd_f64(const Tensor& a, Tensor& u, Tensor& s, Tensor& vh) {
  using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t M = a.size(0), N = a.size(1), K = s.size(0);
  const bool full = u.size(1) == M && vh.size(0) == N;
  Eigen::Map<const Mat> A(a.data_ptr<double>(), M, N);
  // Divide and conquer: LAPACK gesdd's method, torch's default driver on the CPU.
  Eigen::BDCSVD<Mat> dec(A, full ? (Eigen::ComputeFullU | Eigen::ComputeFullV)
                                 : (Eigen::ComputeThinU | Eigen::ComputeThinV));
  if (dec.info() != Eigen::Success) fail("[svd] did not converge for a [", M, ", ", N, "] matrix");
  Eigen::Map<Mat>(u.data_ptr<double>(), u.size(0), u.size(1)) = dec.matrixU();
  Eigen::Map<Eigen::VectorXd>(s.data_ptr<double>(), K) = dec.singularValues();
  Eigen::Map<Mat>(vh.data_ptr<double>(), vh.size(0), vh.size(1)) = dec.matrixV().transpose();
}

}  // namespace peft::cpu
