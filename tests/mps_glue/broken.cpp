// broken.cpp: an MPS glue source that does not compile, on purpose (tests/test_build.py builds
// it through setup.py with TERNARY_OPS_MPS_GLUE_SOURCE): the build must warn, go on, and leave
// no ternary_ops._C_mps behind.
#include "aten/linear_frame.h"

#error "tests/mps_glue/broken.cpp: this MPS glue does not compile"
