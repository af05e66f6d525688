/* Shared by _fastsend.c and _audio.c: the router's audio tick in C (AudioTick, see _audio.c). */

#ifndef TOWNHALL_AUDIO_H
#define TOWNHALL_AUDIO_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Adds the AudioTick type to the module; -1 with an exception set on failure. */
int audio_add_type(PyObject *module);

#endif
