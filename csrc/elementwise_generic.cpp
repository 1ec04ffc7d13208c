// The float activation kernels for any CPU (baseline instruction set of the build).
#include <cstdint>

#include "elementwise.h"

namespace fastinr {
namespace generic {
#include "elementwise_impl.h"
}  // namespace generic
}  // namespace fastinr
