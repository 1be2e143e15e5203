/* fitsnap-uq: registers fix snap/uq and compute snap/uq/atom with LAMMPS (`plugin load snapuqplugin.so`, or automatically
   from a folder in LAMMPS_PLUGIN_PATH). GPL-2.0-only, like fitsnap-uq and LAMMPS.

   FITSNAP_UQ_LAMMPS_VERSION is the version string of the LAMMPS whose headers this was compiled
   with (set by lammps_hooks.native.build_plugin, e.g. "22 Jul 2025"). The plugin uses the C++
   classes of LAMMPS directly, so it refuses to register in any other LAMMPS version. */

#include "lammpsplugin.h"

#include "error.h"
#include "lammps.h"

#include "compute_snap_uq_atom.h"
#include "fix_snap_uq.h"

#include <cstring>

#ifndef FITSNAP_UQ_LAMMPS_VERSION
#error "compile with -DFITSNAP_UQ_LAMMPS_VERSION=\"<LAMMPS version string>\" (see lammps_hooks/native.py)"
#endif

using namespace LAMMPS_NS;

static Fix *snap_uq_creator(LAMMPS *lmp, int argc, char **argv)
{
  return new FixSnapUQ(lmp, argc, argv);
}

static Compute *snap_uq_atom_creator(LAMMPS *lmp, int argc, char **argv)
{
  return new ComputeSnapUQAtom(lmp, argc, argv);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  auto *host = (LAMMPS *) lmp;
  if (strcmp(host->version, FITSNAP_UQ_LAMMPS_VERSION) != 0)
    host->error->all(FLERR,
                     "fitsnap-uq snap/uq plugin: compiled for LAMMPS version '{}' but loaded into "
                     "LAMMPS version '{}'; rebuild it against this LAMMPS with "
                     "'fitsnap-uq build-plugin'",
                     FITSNAP_UQ_LAMMPS_VERSION, host->version);

  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;
  plugin.version = FITSNAP_UQ_LAMMPS_VERSION;
  plugin.style = "fix";
  plugin.name = "snap/uq";
  plugin.info = "fix snap/uq: SNAP uncertainty from a fitsnap-uq posterior or network ensemble";
  plugin.author = "fitsnap-uq";
  plugin.creator.v2 = (lammpsplugin_factory2 *) &snap_uq_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);

  plugin.style = "compute";
  plugin.name = "snap/uq/atom";
  plugin.info = "compute snap/uq/atom: SNAP descriptors and their force rows in one pass";
  plugin.creator.v2 = (lammpsplugin_factory2 *) &snap_uq_atom_creator;
  (*register_plugin)(&plugin, lmp);
}
