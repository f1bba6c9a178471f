// mps_module.cpp: the Python module ternary_ops._C_mps, which carries the MPS glue
// (csrc/aten/ops_mps.mm) into the process. Built on macOS only, as an optional extension
// (setup.py): a failed build leaves the package without it. Importing it runs the glue's
// TORCH_LIBRARY_IMPL(ternary, MPS, ...) registration, for the schemas ternary_ops._C defines,
// so ternary_ops imports _C first. The module itself has no functions: its presence is the
// answer (ternary_ops.backends()["mps"] == "native").
#include <Python.h>

#define TERNARY_STR_(x) #x
#define TERNARY_STR(x) TERNARY_STR_(x)
#define TERNARY_PYINIT_(name) PyInit_##name
#define TERNARY_PYINIT(name) TERNARY_PYINIT_(name)

static struct PyModuleDef kTernaryMpsModule = {
    PyModuleDef_HEAD_INIT, TERNARY_STR(TORCH_EXTENSION_NAME),
    "ternary_ops MPS glue: registers the Metal kernels of torch.ops.ternary.* for the MPS "
    "dispatch key",
    -1, nullptr, nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC TERNARY_PYINIT(TORCH_EXTENSION_NAME)(void) {
  return PyModule_Create(&kTernaryMpsModule);
}
