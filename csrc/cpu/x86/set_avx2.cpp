// cpu/x86/set_avx2.cpp: AVX2 + FMA kernels (vpmaddubsw/vpmaddwd for act="int8"). Built with
// the "_avx2" flags; see avx2_family.h.
#define TERNARY_X86_SET_FN avx2_set
#define TERNARY_X86_SET_NAME "avx2"
#include "cpu/x86/avx2_family.h"
