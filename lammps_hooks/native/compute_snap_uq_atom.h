/* fitsnap-uq: compute snap/uq/atom, per-atom SNAP descriptors and their force rows in one pass.
   GPL-2.0-only, like fitsnap-uq and LAMMPS. See compute_snap_uq_atom.cpp. */

#ifndef FITSNAP_UQ_COMPUTE_SNAP_UQ_ATOM_H
#define FITSNAP_UQ_COMPUTE_SNAP_UQ_ATOM_H

#include "compute.h"

#include "snap_bispectrum.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace LAMMPS_NS {

class ComputeSnapUQAtom : public Compute {
 public:
  ComputeSnapUQAtom(class LAMMPS *, int, char **);
  ~ComputeSnapUQAtom() override;
  void init() override;
  void init_list(int, class NeighList *) override;
  void compute_peratom() override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;
  double memory_usage() override;

  int ncoeff;           // bispectrum components per atom
  int nvalues;          // descriptors per atom: ncoeff, + ncoeff (ncoeff + 1) / 2 with quadraticflag
  int quadraticflag;    // 1: the quadratic products of the components follow them
  int forces;           // 1: columns nvalues .. also hold the force rows
  int nmembers;         // > 0 (keyword members K): columns nvalues .. hold K member forces instead

  // with members K: called for each local atom i of the group right after its B_i (values[i], ncoeff)
  // is computed; fills grad (K, ncoeff) with dE_k/dB_i of every member k (set by fix snap/uq)
  std::function<void(int i, const double *b, double *grad)> member_gradients;
  // ... or, without it (the Python hook), read them from a per-atom array d2_NAME[K * ncoeff] of
  // fix property/atom (keyword gradients NAME), set before the compute is invoked
  std::string gradients_name;

 private:
  int nmax, ncols;
  double rcutfac, cutmax;
  std::vector<double> radelem, wjelem;    // per type, 1-based
  std::vector<int> elem;                  // per type, 1-based: element (chem), else 0
  std::vector<std::vector<double>> cutsq;
  double **values;
  class NeighList *list;
  std::unique_ptr<fitsnap_uq::SnapBispectrum> kernel;
  std::vector<int> neighbors;
  std::vector<double> dbdr, grad;
};

}    // namespace LAMMPS_NS

#endif
