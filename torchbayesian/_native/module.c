/* The Python entry point of the kernels' shared library. The kernels are plain C functions that
 * torchbayesian._native loads with ctypes; being a Python extension module lets setuptools build,
 * name and install the library like any other (and a wheel ship it prebuilt). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef kernels_module = {
    PyModuleDef_HEAD_INIT, "_kernels", "Fused CPU kernels of torchbayesian, loaded with ctypes.", -1, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
