// Makes the operator library importable as `sparse_attention_hub._C`; importing it runs the
// static TORCH_LIBRARY registrations of every operator file.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "sparse_attention_hub operators", -1,
                               nullptr};
  return PyModule_Create(&module);
}
