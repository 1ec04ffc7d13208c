// The float activation kernels for any CPU (baseline instruction set of the build).
#include <cstdint>

#include "elementwise.h"
#include "prefetch.h"
#include "rows.h"

namespace fastinr {
namespace generic {
#include "elementwise_impl.h"
#include "rows_impl.h"
}  // namespace generic
}  // namespace fastinr
