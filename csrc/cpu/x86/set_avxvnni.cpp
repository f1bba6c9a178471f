// cpu/x86/set_avxvnni.cpp: AVX2 + FMA + AVX-VNNI kernels (256-bit vpdpbusd for act="int8").
// Built with the "_avxvnni" flags; see avx2_family.h.
#define TERNARY_X86_AVXVNNI 1
#define TERNARY_X86_SET_FN avxvnni_set
#define TERNARY_X86_SET_NAME "avxvnni"
#include "cpu/x86/avx2_family.h"
