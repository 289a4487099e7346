// The importable stub of the prebuilt extension (setup.py only): importing pytl._C loads this
// shared library, whose static initialisers register the pytl ops with the dispatcher.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "pytl's compiled ops (torch.ops.pytl)", -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
}
