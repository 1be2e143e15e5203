/* fitsnap-uq: compute snap/uq/atom, per-atom SNAP descriptors and their force rows in one pass.
   GPL-2.0-only, like fitsnap-uq and LAMMPS.

   compute ID group snap/uq/atom rcutfac rfac0 twojmax R_1 .. R_ntypes w_1 .. w_ntypes keyword value ...

   The arguments and keywords of LAMMPS' compute sna/atom (rmin0, switchflag, bzeroflag, bnormflag,
   wselfallflag, quadraticflag, chem NELEM map_1 .. map_ntypes; not switchinnerflag), plus
   `forces yes|no` (default yes). With nvalues = ncoeff (+ ncoeff (ncoeff + 1) / 2 with quadraticflag),
   a per-atom array of nvalues + 3 * ntypes * nvalues columns (nvalues only with forces no):
     columns 1 .. nvalues: as compute sna/atom (B_i, then 0.5 B_ik^2 and B_ik B_il, l > k, row by row);
     then the force rows, as compute snad/atom: column nvalues + (t * 3 + c) * nvalues + k holds
     -d(sum over atoms i of type t+1 of value k of i) / d r_jc, so that a linear SNAP's force is D . beta.
   With `members K` (fix snap/uq sets it for a network ensemble; quadraticflag 0), the columns after B
   are instead the K members' forces, column nvalues + 3 k + c holding
     F_k,jc = -sum_i dE_k/dB_i . dB_i/dr_jc,
   with dE_k/dB_i from the callback member_gradients (the networks' backward pass, in the fix) and
   the per-pair derivatives dB_i/dr_j of this pass (or, with `gradients NAME`, dE_k/dB_i from the
   per-atom array d2_NAME[K * ncoeff] of a fix property/atom, which the Python hook fills); ghost contributions are summed onto their owners
   by reverse communication, as the force rows are. This is what LAMMPS' ML-IAP does for one network.
   With chem, the neighbours' elements resolve the components (explicit multi-element SNAP, see
   snap_bispectrum.h), map_t being the element (0 .. NELEM - 1) of type t.
   One pass over the neighbours computes both, where compute sna/atom and compute snad/atom each build
   the atoms' densities and Z again; the numbers equal theirs to rounding (tests/test_plugin.py). */

#include "compute_snap_uq_atom.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "pair.h"
#include "update.h"

#include <algorithm>
#include <cmath>
#include <cstring>

using namespace LAMMPS_NS;

/* ---------------------------------------------------------------------- */

ComputeSnapUQAtom::ComputeSnapUQAtom(LAMMPS *lmp, int narg, char **arg) :
    Compute(lmp, narg, arg), ncoeff(0), nvalues(0), quadraticflag(0), forces(1), nmembers(0), nmax(0),
    ncols(0),
    values(nullptr), list(nullptr)
{
  const int ntypes = atom->ntypes;
  if (narg < 6 + 2 * ntypes)
    error->all(FLERR, "compute snap/uq/atom: expected rcutfac rfac0 twojmax, then {} radii and {} "
                      "weights (one per atom type)", ntypes, ntypes);
  rcutfac = utils::numeric(FLERR, arg[3], false, lmp);
  const double rfac0 = utils::numeric(FLERR, arg[4], false, lmp);
  const int twojmax = utils::inumeric(FLERR, arg[5], false, lmp);
  if (rcutfac <= 0.0 || rfac0 <= 0.0 || twojmax < 0)
    error->all(FLERR, "compute snap/uq/atom: rcutfac and rfac0 must be > 0 and twojmax >= 0");
  radelem.assign(ntypes + 1, 0.0);
  wjelem.assign(ntypes + 1, 0.0);
  for (int t = 1; t <= ntypes; t++) {
    radelem[t] = utils::numeric(FLERR, arg[5 + t], false, lmp);
    wjelem[t] = utils::numeric(FLERR, arg[5 + ntypes + t], false, lmp);
  }

  double rmin0 = 0.0;
  int switchflag = 1, bzeroflag = 1, bnormflag = 0, wselfallflag = 0, nelem = 1;
  elem.assign(ntypes + 1, 0);
  int iarg = 6 + 2 * ntypes;
  while (iarg < narg) {
    const std::string key = arg[iarg];
    if (iarg + 2 > narg) error->all(FLERR, "compute snap/uq/atom: keyword {} needs a value", key);
    const char *value = arg[iarg + 1];
    if (key == "chem") {
      if (iarg + 2 + ntypes > narg)
        error->all(FLERR, "compute snap/uq/atom: chem needs the number of elements and the element "
                          "(0-based) of each of the {} atom types", ntypes);
      nelem = utils::inumeric(FLERR, value, false, lmp);
      if (nelem < 1) error->all(FLERR, "compute snap/uq/atom: chem needs at least one element");
      for (int t = 1; t <= ntypes; t++) {
        elem[t] = utils::inumeric(FLERR, arg[iarg + 1 + t], false, lmp);
        if (elem[t] < 0 || elem[t] >= nelem)
          error->all(FLERR, "compute snap/uq/atom: chem: element {} of atom type {} is not in 0 .. {}",
                     elem[t], t, nelem - 1);
      }
      iarg += 2 + ntypes;
      continue;
    }
    if (key == "rmin0") rmin0 = utils::numeric(FLERR, value, false, lmp);
    else if (key == "switchflag") switchflag = utils::inumeric(FLERR, value, false, lmp);
    else if (key == "bzeroflag") bzeroflag = utils::inumeric(FLERR, value, false, lmp);
    else if (key == "bnormflag") bnormflag = utils::inumeric(FLERR, value, false, lmp);
    else if (key == "wselfallflag") wselfallflag = utils::inumeric(FLERR, value, false, lmp);
    else if (key == "quadraticflag") quadraticflag = utils::inumeric(FLERR, value, false, lmp);
    else if (key == "forces") forces = utils::logical(FLERR, value, false, lmp);
    else if (key == "gradients") gradients_name = value;
    else if (key == "members") {
      nmembers = utils::inumeric(FLERR, value, false, lmp);
      if (nmembers < 1) error->all(FLERR, "compute snap/uq/atom: members needs K >= 1");
    }
    else if (key == "switchinnerflag") {
      if (utils::inumeric(FLERR, value, false, lmp) != 0)
        error->all(FLERR, "compute snap/uq/atom: switchinnerflag 1 is not supported (use compute "
                          "sna/atom and compute snad/atom)");
    } else
      error->all(FLERR, "compute snap/uq/atom: unknown keyword {}", key);
    iarg += 2;
  }

  kernel = std::make_unique<fitsnap_uq::SnapBispectrum>(twojmax, rfac0, rmin0, switchflag != 0,
                                                        bzeroflag != 0, bnormflag != 0, nelem,
                                                        wselfallflag != 0);
  ncoeff = kernel->ncoeff();
  nvalues = ncoeff + (quadraticflag ? ncoeff * (ncoeff + 1) / 2 : 0);
  cutsq.assign(ntypes + 1, std::vector<double>(ntypes + 1, 0.0));
  cutmax = 0.0;
  for (int i = 1; i <= ntypes; i++)
    for (int j = 1; j <= ntypes; j++) {
      const double cut = (radelem[i] + radelem[j]) * rcutfac;
      cutsq[i][j] = cut * cut;
      cutmax = std::max(cutmax, cut);
    }

  if (nmembers && (!forces || quadraticflag))
    error->all(FLERR, "compute snap/uq/atom: members needs forces yes and quadraticflag 0");
  const int nforce = nmembers ? 3 * nmembers : 3 * ntypes * nvalues;
  ncols = nvalues + (forces ? nforce : 0);
  peratom_flag = 1;
  size_peratom_cols = ncols;
  comm_reverse = forces ? nforce : 0;
  dbdr.assign(3 * ncoeff, 0.0);
  grad.assign((size_t) std::max(nmembers, 1) * ncoeff, 0.0);
}

/* ---------------------------------------------------------------------- */

ComputeSnapUQAtom::~ComputeSnapUQAtom()
{
  if (copymode) return;
  memory->destroy(values);
}

/* ---------------------------------------------------------------------- */

void ComputeSnapUQAtom::init()
{
  if (force->pair == nullptr)
    error->all(FLERR, "compute snap/uq/atom needs a pair style (for its neighbour list)");
  if (force->pair->cutforce < cutmax)
    error->all(FLERR, "compute snap/uq/atom: its cutoff {} is longer than the pair cutoff {}", cutmax,
               force->pair->cutforce);
  neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_OCCASIONAL);
}

void ComputeSnapUQAtom::init_list(int /*id*/, NeighList *ptr)
{
  list = ptr;
}

/* ---------------------------------------------------------------------- */

void ComputeSnapUQAtom::compute_peratom()
{
  invoked_peratom = update->ntimestep;
  if (atom->nmax > nmax) {
    memory->destroy(values);
    nmax = atom->nmax;
    memory->create(values, nmax, ncols, "snap/uq/atom:values");
    array_atom = values;
  }
  const int ntotal = atom->nlocal + atom->nghost;
  if (ntotal > 0) memset(&values[0][0], 0, sizeof(double) * ntotal * ncols);

  double **given = nullptr;    // dE_k/dB_i from a per-atom array (keyword gradients)
  if (nmembers && !member_gradients) {
    int flag = -1, cols = -1;
    const int idx = gradients_name.empty() ? -1 : atom->find_custom(gradients_name.c_str(), flag, cols);
    if (idx < 0 || flag != 1 || cols != nmembers * ncoeff)
      error->all(FLERR, "compute snap/uq/atom: members K needs fix snap/uq, or 'gradients NAME' naming "
                        "a per-atom array d2_NAME[{}] of fix property/atom (K x ncoeff)",
                 nmembers * ncoeff);
    given = atom->darray[idx];
  }
  neighbor->build_one(list);
  double **x = atom->x;
  const int *type = atom->type;
  const int *mask = atom->mask;
  for (int ii = 0; ii < list->inum; ii++) {
    const int i = list->ilist[ii];
    if (!(mask[i] & groupbit)) continue;
    const int itype = type[i];
    const int *jlist = list->firstneigh[i];
    const int jnum = list->numneigh[i];
    kernel->clear_neighbors();
    neighbors.clear();
    for (int jj = 0; jj < jnum; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      const double rsq = dx * dx + dy * dy + dz * dz;
      const int jtype = type[j];
      if (rsq < cutsq[itype][jtype] && rsq > 1e-20) {
        kernel->add_neighbor(dx, dy, dz, (radelem[itype] + radelem[jtype]) * rcutfac, wjelem[jtype],
                             elem[jtype]);
        neighbors.push_back(j);
      }
    }
    double *bi = values[i];
    kernel->compute(bi, elem[itype]);
    if (quadraticflag) {    // 0.5 B_k^2, then B_k B_l (l > k), row by row
      double *q = bi + ncoeff;
      for (int k = 0; k < ncoeff; k++) {
        *q++ = 0.5 * bi[k] * bi[k];
        for (int l = k + 1; l < ncoeff; l++) *q++ = bi[k] * bi[l];
      }
    }
    if (!forces) continue;
    if (nmembers) {
      // F_k on neighbour j: -g_k . dB_i/dr_j; on i the opposite (dB_i/dr_i = -sum_j dB_i/dr_j)
      if (given)
        std::copy(given[i], given[i] + (size_t) nmembers * ncoeff, grad.begin());
      else
        member_gradients(i, bi, grad.data());
      double *fi = values[i] + nvalues;
      for (int k = 0; k < (int) neighbors.size(); k++) {
        kernel->gradient(k, dbdr.data());
        double *fj = values[neighbors[k]] + nvalues;
        for (int m = 0; m < nmembers; m++) {
          const double *gm = grad.data() + (size_t) m * ncoeff;
          for (int c = 0; c < 3; c++) {
            const double *g = dbdr.data() + c * ncoeff;
            double s = 0.0;
            for (int l = 0; l < ncoeff; l++) s += gm[l] * g[l];
            fi[3 * m + c] += s;
            fj[3 * m + c] -= s;
          }
        }
      }
      continue;
    }
    // d(values of i) / d r_ij goes to i (+) and to j (-), in the block of i's type
    const int offset = nvalues + (itype - 1) * 3 * nvalues;
    double *di = values[i] + offset;
    for (int k = 0; k < (int) neighbors.size(); k++) {
      kernel->gradient(k, dbdr.data());
      double *dj = values[neighbors[k]] + offset;
      for (int c = 0; c < 3; c++) {
        const double *g = dbdr.data() + c * ncoeff;
        double *ti = di + c * nvalues, *tj = dj + c * nvalues;
        for (int l = 0; l < ncoeff; l++) {
          ti[l] += g[l];
          tj[l] -= g[l];
        }
        if (!quadraticflag) continue;
        int m = ncoeff;
        for (int a = 0; a < ncoeff; a++) {
          const double v = bi[a] * g[a];
          ti[m] += v;
          tj[m++] -= v;
          for (int l = a + 1; l < ncoeff; l++) {
            const double w = bi[a] * g[l] + g[a] * bi[l];
            ti[m] += w;
            tj[m++] -= w;
          }
        }
      }
    }
  }
  if (forces) comm->reverse_comm(this);
}

/* ---------------------------------------------------------------------- */

int ComputeSnapUQAtom::pack_reverse_comm(int n, int first, double *buf)
{
  int m = 0;
  for (int i = first; i < first + n; i++)
    for (int c = nvalues; c < ncols; c++) buf[m++] = values[i][c];
  return m;
}

void ComputeSnapUQAtom::unpack_reverse_comm(int n, int *list_in, double *buf)
{
  int m = 0;
  for (int i = 0; i < n; i++) {
    const int j = list_in[i];
    for (int c = nvalues; c < ncols; c++) values[j][c] += buf[m++];
  }
}

/* ---------------------------------------------------------------------- */

double ComputeSnapUQAtom::memory_usage()
{
  return (double) nmax * ncols * sizeof(double);
}
