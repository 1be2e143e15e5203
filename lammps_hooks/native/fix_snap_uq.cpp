/* fitsnap-uq: fix snap/uq, per-atom and global SNAP uncertainty inside a plain LAMMPS run.
   GPL-2.0-only, like fitsnap-uq and LAMMPS.

   fix ID group snap/uq N posterior.uq keyword value ...

   Every N steps (and at the start of a run on a step that is a multiple of N) the fix evaluates
   the per-atom descriptors B_i and force rows D_i with the SNAP parameters of the posterior file
   (linear or quadratic, chemflag 0 or 1), in one pass with this plugin's `compute snap/uq/atom`,
   which it defines, and computes, with Cov(theta) = L L^T from the file:
     per atom i (f_ID[1], f_ID[2]; dumpable):
       estd_i = sqrt(x_i^T Cov x_i),  x_i = [1, B_i] in the block of i's element   (eV)
       fstd_i = sqrt(trace(D_i Cov D_i^T)), D_i (3, p) the force rows from snad/atom (eV/A)
     global (f_ID[1..8]; thermo, variables, fix halt):
       pe_std = sqrt(X^T Cov X), X = sum_i x_i over the group (eV), pe_atom_std = pe_std / N,
       estd_max, estd_mean, fstd_max, fstd_mean, nflagged, halt
     cost (f_ID[9..11], this MPI rank, since the fix was defined; a summary is logged after each run):
       evaluations, seconds in the descriptors, seconds in the rest (the products with L, the
       reductions, the fingerprint, flagging)
     scalar f_ID: the value of the `measure` that `flag` and `halt` threshold.
   With a per-atom force scale in the file (atom_scale), each force component's variance |D_ix L|^2
   is multiplied by exp(theta . z_i) (fitsnap_uq/linear/atomscale.py; force_variance below; z_i's
   standardized features guarded at the training range scale_zlo .. scale_zhi when given: beyond
   it a feature may raise the scale but not lower it); with
   `noise yes` the file's noise floors are added: noise_energy to each x_i^T Cov x_i, N^2 noise_energy
   to X^T Cov X, exp(phi . z_i) noise_force to each force component's variance (Posterior.predict_raw
   with noise and atom labels). Per-atom energies are not scaled. With a per-configuration energy
   scale in the file (energy_scale, version 3), the total-energy variance X^T Cov X is multiplied by
   exp(theta . z) and its floor N^2 noise_energy by exp(phi . z), z from the configuration's energy
   row per atom X / N (energy_log_scales below; Posterior.predict_raw with natoms).
   This is the same computation, with the same factor L, as lammps_hooks/snap_uq.py (SnapUQHook),
   whose numbers are the reference (tests/test_plugin.py compares the two to 1e-10).

   Keywords: forces yes|no, noise yes|no, measure NAME, flag THRESHOLD FILE.xyz, halt THRESHOLD,
             elements E1 .. Entypes, verify yes|no.
   The element of each atom type is the one the snap pair_coeff gives it (which must come before the
   fix); `elements`, if given, must agree with it, and every element must be in the posterior file.
*/

#include "fix_snap_uq.h"

#include "compute_snap_uq_atom.h"
#include "simd_clones.h"

#include "atom.h"
#include "comm.h"
#include "compute.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "modify.h"
#include "pair.h"
#include "timer.h"
#include "update.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

using namespace LAMMPS_NS;
using namespace FixConst;

static const char *const GLOBAL_NAMES[] = {"pe_std",    "pe_atom_std", "estd_max", "estd_mean",
                                           "fstd_max",  "fstd_mean",   "nflagged", "halt"};
static_assert(sizeof(GLOBAL_NAMES) / sizeof(GLOBAL_NAMES[0]) == 8, "the uncertainty entries of f_ID");
static const char *const POSTERIOR_MAGIC = "fitsnap-uq-plugin-posterior";
static const int POSTERIOR_VERSION = 3;    // 3 added energy_scale, 2 noise and atom_scale; 1, 2 read
static const long MAX_FACTOR_RANK = 100000;    // columns of the factor L (live coefficients or samples)
static const long MAX_MEMBERS = 10000;          // members of a network ensemble
enum { ACT_LINEAR, ACT_TANH, ACT_SIGMOID, ACT_RELU, ACT_SOFTPLUS };
static const char *const ACTIVATIONS[] = {"linear", "tanh", "sigmoid", "relu", "softplus"};

namespace {
// The elements that pair_coeff gave the snap pair style (Pair::nelements, elements, map: protected,
// filled by Pair::map_element2type), read through a class derived from Pair that is never created.
struct PairElements : public Pair {
  static int count(Pair *p) { return p->*(&PairElements::nelements); }
  static char **names(Pair *p) { return p->*(&PairElements::elements); }
  static int *type_map(Pair *p) { return p->*(&PairElements::map); }
};
}    // namespace

/* ---------------------------------------------------------------------- */

FixSnapUQ::FixSnapUQ(LAMMPS *lmp, int narg, char **arg) :
    Fix(lmp, narg, arg), block(0), rank(0), chemflag(0), have_noise(0), noise_energy(0.0),
    noise_force(0.0), scaleflag(0), fit_rank(0), me_rank(0), escaleflag(0), bzeroflag(0), nnflag(0), nmembers(0), forces(1),
    noiseflag(0), measure(FSTD_MAX), flagflag(0), haltflag(0),
    verifyflag(1), flag_above(0.0), halt_above(0.0), flag_fp(nullptr), c_sna(nullptr),
    c_pair(nullptr), uq(nullptr), verified(0), have_key(false), last_key(0),
    last_step(-1)
{
  if (narg < 5) error->all(FLERR, "Illegal fix snap/uq command: fix ID group snap/uq N posterior.uq ...");
  nevery = utils::inumeric(FLERR, arg[3], false, lmp);
  if (nevery < 1) error->all(FLERR, "fix snap/uq: N must be >= 1, got {}", arg[3]);
  posterior_file = arg[4];

  read_posterior(posterior_file);
  // a linear posterior is the running snap pair style's; a network ensemble runs with any pair style
  // (its mean or one member through pair_style mliap model nn, or another potential)
  Pair *snap = nullptr;
  if (!nnflag) {
    snap = force->pair ? force->pair_match("snap", 1) : nullptr;
    if (snap == nullptr)
      error->all(FLERR, "fix snap/uq needs pair_style snap (alone or inside hybrid/overlay), "
                        "defined before this fix");
  }
  const int nelem = (int) elements.size();
  const int ntypes = atom->ntypes;

  // optional keywords

  bool measure_set = false;
  std::vector<std::string> type_elements;
  int iarg = 5;
  while (iarg < narg) {
    std::string key = arg[iarg];
    if (key == "forces") {
      if (iarg + 2 > narg) error->all(FLERR, "fix snap/uq: forces needs yes or no");
      forces = utils::logical(FLERR, arg[iarg + 1], false, lmp);
      iarg += 2;
    } else if (key == "noise") {
      if (iarg + 2 > narg) error->all(FLERR, "fix snap/uq: noise needs yes or no");
      noiseflag = utils::logical(FLERR, arg[iarg + 1], false, lmp);
      iarg += 2;
    } else if (key == "verify") {
      if (iarg + 2 > narg) error->all(FLERR, "fix snap/uq: verify needs yes or no");
      verifyflag = utils::logical(FLERR, arg[iarg + 1], false, lmp);
      iarg += 2;
    } else if (key == "measure") {
      if (iarg + 2 > narg) error->all(FLERR, "fix snap/uq: measure needs a name");
      std::string name = arg[iarg + 1];
      measure = -1;
      for (int k : {FSTD_MAX, FSTD_MEAN, ESTD_MAX, ESTD_MEAN, PE_ATOM_STD, PE_STD})
        if (name == GLOBAL_NAMES[k]) measure = k;
      if (measure < 0)
        error->all(FLERR, "fix snap/uq: measure must be one of fstd_max fstd_mean estd_max "
                          "estd_mean pe_atom_std pe_std, not {}", name);
      measure_set = true;
      iarg += 2;
    } else if (key == "flag") {
      if (iarg + 3 > narg) error->all(FLERR, "fix snap/uq: flag needs THRESHOLD FILE");
      flagflag = 1;
      flag_above = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
      flag_file = arg[iarg + 2];
      iarg += 3;
    } else if (key == "halt") {
      if (iarg + 2 > narg) error->all(FLERR, "fix snap/uq: halt needs THRESHOLD");
      haltflag = 1;
      halt_above = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
      iarg += 2;
    } else if (key == "elements") {
      if (iarg + 1 + ntypes > narg)
        error->all(FLERR, "fix snap/uq: elements needs one element name per atom type ({})", ntypes);
      for (int i = 0; i < ntypes; i++) type_elements.emplace_back(arg[iarg + 1 + i]);
      iarg += 1 + ntypes;
    } else
      error->all(FLERR, "fix snap/uq: unknown keyword {}", key);
  }
  if (noiseflag && nnflag)
    error->all(FLERR, "fix snap/uq: noise yes adds a linear posterior's noise floors; network "
                      "ensemble file {} has none", posterior_file);
  if (noiseflag && !have_noise)
    error->all(FLERR, "fix snap/uq: posterior file {}: key 'noise': noise yes needs the posterior's "
                      "noise floors, which the file does not have (a posterior without Energy and "
                      "Force noise, or a version 1 file: rewrite it with fitsnap-uq build-plugin)",
               posterior_file);
  if (!measure_set) measure = forces ? FSTD_MAX : ESTD_MAX;
  if ((measure == FSTD_MAX || measure == FSTD_MEAN) && !forces)
    error->all(FLERR, "fix snap/uq: measure {} needs forces yes", GLOBAL_NAMES[measure]);

  // LAMMPS type -> posterior element: the snap pair_coeff's element of each type (types it maps
  // to NULL from the 'elements' keyword), which must be in the posterior; for a network ensemble the
  // 'elements' keyword (or the file's only element)

  if (nnflag) {
    if (type_elements.empty() && nelem > 1)
      error->all(FLERR, "fix snap/uq: network ensemble file {} has {} elements: give the element of each "
                        "atom type with 'elements E1 .. E{}'", posterior_file, nelem, ntypes);
    type2elem.assign(ntypes + 1, -1);
    for (int t = 1; t <= ntypes; t++) {
      const std::string name = type_elements.empty() ? elements[0] : type_elements[t - 1];
      auto it = std::find(elements.begin(), elements.end(), name);
      if (it == elements.end())
        error->all(FLERR, "fix snap/uq: 'elements' gives atom type {} as {}, which is not in network "
                          "ensemble file {}", t, name, posterior_file);
      type2elem[t] = (int) (it - elements.begin());
    }
  } else {
  char **pair_names = PairElements::names(snap);
  const int *pair_map = PairElements::type_map(snap);
  const int pair_nelem = PairElements::count(snap);
  if (pair_names == nullptr || pair_map == nullptr)
    error->all(FLERR, "fix snap/uq must come after the pair_coeff command of pair_style snap (it "
                      "reads the element of each atom type from it)");
  std::vector<std::string> pair_elements(ntypes + 1, "NULL");
  for (int t = 1; t <= ntypes; t++)
    if (pair_map[t] >= 0 && pair_map[t] < pair_nelem) pair_elements[t] = pair_names[pair_map[t]];
  type2elem.assign(ntypes + 1, -1);
  for (int t = 1; t <= ntypes; t++) {
    std::string name = pair_elements[t];
    if (!type_elements.empty()) {
      if (name != "NULL" && type_elements[t - 1] != name)
        error->all(FLERR, "fix snap/uq: 'elements' gives atom type {} as {}, but the snap pair_coeff "
                          "maps it to {}", t, type_elements[t - 1], name);
      name = type_elements[t - 1];
    } else if (name == "NULL")
      error->all(FLERR, "fix snap/uq: atom type {} is NULL in the snap pair_coeff; give the element of "
                        "each atom type with 'elements E1 .. E{}'", t, ntypes);
    auto it = std::find(elements.begin(), elements.end(), name);
    if (it == elements.end()) {
      std::string names;
      for (const auto &e : elements) names += " " + e;
      error->all(FLERR, "fix snap/uq: atom type {} is element {} (snap pair_coeff{}), which is not in "
                        "posterior file {} (elements{}): it is not the posterior of this potential",
                 t, name, type_elements.empty() ? "" : " and 'elements'", posterior_file, names);
    }
    type2elem[t] = (int) (it - elements.begin());
  }

  // explicit multi-element SNAP: LAMMPS numbers the elements in their order of first appearance in
  // pair_coeff, and the descriptor columns were fitted in the posterior's order: the two must agree

  if (chemflag) {
    bool same = (pair_nelem == nelem);
    for (int t = 1; t <= ntypes; t++)
      if (pair_map[t] >= 0 && pair_map[t] != type2elem[t]) same = false;
    if (!same) {
      std::string order, mine;
      for (int e = 0; e < pair_nelem; e++) order += fmt::format(" {}", pair_names[e]);
      for (const auto &e : elements) mine += " " + e;
      error->all(FLERR, "fix snap/uq: posterior file {}: section [BISPECTRUM], key 'chemflag': "
                        "explicit multi-element SNAP (chemflag 1) numbers the elements in the order "
                        "they first appear in pair_coeff ({}), and its descriptors were fitted with "
                        "the posterior's order ({}): number the atom types so that the elements "
                        "first appear in that order and every element has a type",
                 posterior_file, utils::trim(order), utils::trim(mine));
    }
  }
  }

  // the descriptor compute, with the pair style's parameters for each type (as the hook does)

  std::string rad, wjs, chem;
  for (int t = 1; t <= ntypes; t++) {
    rad += " " + radelem_txt[type2elem[t]];
    wjs += " " + wj_txt[type2elem[t]];
    chem += fmt::format(" {}", type2elem[t]);
  }
  snap_args = fmt::format("{} {} {}{}{} {}", rcutfac_txt, rfac0_txt, twojmax_txt, rad, wjs, options_txt);
  if (chemflag) snap_args += fmt::format(" chem {}{}", nelem, chem);
  id_sna = std::string(id) + "_sna";
  // B (and its products with quadraticflag) in the first block - 1 columns, then the snad/atom layout
  // (linear), or the members' forces (network ensemble)
  std::string members = (nnflag && forces) ? fmt::format(" members {}", nmembers) : "";
  c_sna = modify->add_compute(fmt::format("{} all snap/uq/atom {} forces {}{}", id_sna, snap_args,
                                          forces ? "yes" : "no", members));
  Pair *energy_pair = snap;
  if (nnflag) energy_pair = force->pair ? force->pair_match("mliap", 1) : nullptr;
  if (energy_pair) {
    id_pair = std::string(id) + "_pair";
    c_pair = modify->add_compute(fmt::format("{} all pair {}", id_pair, nnflag ? "mliap" : "snap"));
  } else if (verifyflag) {
    verifyflag = 0;
    if (comm->me == 0)
      utils::logmesg(lmp, "fix snap/uq: no (single) pair_style mliap: the network ensemble is not "
                          "checked against the running potential\n");
  }
  connect_compute();
  if (c_sna->size_peratom_cols != expected_columns())
    error->all(FLERR, "fix snap/uq: {} {} has {} descriptors but compute sna/atom gives {} columns "
                      "({} expected): the SNAP parameters do not match",
               nnflag ? "network ensemble" : "posterior", posterior_file, block - 1,
               c_sna->size_peratom_cols, expected_columns());

  // outputs

  scalar_flag = 1;
  extscalar = 0;
  vector_flag = 1;
  size_vector = NGLOBAL;
  extvector = 0;
  global_freq = 1;    // latest values, as the hook's internal variables
  peratom_flag = 1;
  size_peratom_cols = 2;
  peratom_freq = 1;
  for (double &g : gvec) g = 0.0;
  for (double &g : run_start) g = 0.0;

  FixSnapUQ::grow_arrays(atom->nmax);
  atom->add_callback(Atom::GROW);
  for (int i = 0; i < atom->nlocal; i++) uq[i][0] = uq[i][1] = 0.0;

  if (flagflag && comm->me == 0) {
    flag_fp = fopen(flag_file.c_str(), "w");
    if (flag_fp == nullptr)
      error->one(FLERR, "fix snap/uq: cannot open flag file {}: {}", flag_file, utils::getsyserror());
  }
  if (comm->me == 0) {
    std::string names;
    for (const auto &e : elements) names += " " + e;
    if (nnflag)
      utils::logmesg(lmp, "fix snap/uq: element(s){}, network ensemble of {} members on {} descriptors "
                          "from {}\n", names, nmembers, block - 1, posterior_file);
    else
      utils::logmesg(lmp, "fix snap/uq: element(s){}, {} coefficients, {} spread of rank {}{}{} from {}\n",
                     names, mean.size(), source, rank,
                     std::string(scaleflag ? ", per-atom force scale" : "")
                         + (escaleflag ? ", per-configuration energy scale" : ""),
                     noiseflag ? ", noise floors" : "",
                     posterior_file);
  }
}

/* ---------------------------------------------------------------------- */

FixSnapUQ::~FixSnapUQ()
{
  if (copymode) return;
  atom->delete_callback(id, Atom::GROW);
  memory->destroy(uq);
  if (flag_fp) fclose(flag_fp);
  if (modify) {
    for (const auto &cid : {id_sna, id_pair})
      if (!cid.empty() && modify->get_compute_by_id(cid)) modify->delete_compute(cid);
  }
}

/* ---------------------------------------------------------------------- */

int FixSnapUQ::setmask()
{
  return POST_FORCE;
}

/* ---------------------------------------------------------------------- */

void FixSnapUQ::init()
{
  c_sna = modify->get_compute_by_id(id_sna);
  c_pair = id_pair.empty() ? nullptr : modify->get_compute_by_id(id_pair);
  if (!c_sna || (!id_pair.empty() && !c_pair))
    error->all(FLERR, "fix snap/uq: its computes {} were deleted", id_sna);
  connect_compute();
  if (c_sna->size_peratom_cols != expected_columns())
    error->all(FLERR, "fix snap/uq: compute {} gives {} columns, expected {}", c_sna->style,
               c_sna->size_peratom_cols, expected_columns());
  // the pair energy is needed once, at the first setup, to check the posterior mean
  if (verifyflag && !verified && c_pair) c_pair->addstep(update->ntimestep);
}

/* ----------------------------------------------------------------------
   columns of the descriptor compute: B, then the force rows (linear) or the K members' forces
------------------------------------------------------------------------- */

int FixSnapUQ::expected_columns() const
{
  const int ncoeff = block - 1;
  if (nnflag) return ncoeff + (forces ? 3 * nmembers : 0);
  return ncoeff * (forces ? 1 + 3 * atom->ntypes : 1);
}

/* ----------------------------------------------------------------------
   a network ensemble: the compute asks this fix for every member's dE_k/dB_i of each atom
------------------------------------------------------------------------- */

void FixSnapUQ::connect_compute()
{
  if (!nnflag) return;
  auto *c = dynamic_cast<ComputeSnapUQAtom *>(c_sna);
  if (c == nullptr) error->all(FLERR, "fix snap/uq: compute {} is not snap/uq/atom", id_sna);
  c->member_gradients = [this](int i, const double *b, double *grad) { member_gradients(i, b, grad); };
}

/* ----------------------------------------------------------------------
   one network on descriptors b (ncoeff): returns the energy (eV) and, when grad is not null,
   fills grad (ncoeff) with dE/dB (forward pass keeping each layer's output, then backward)
------------------------------------------------------------------------- */

static inline double activate(int act, double z)
{
  switch (act) {
    case ACT_TANH: return tanh(z);
    case ACT_SIGMOID: return 1.0 / (1.0 + exp(-z));
    case ACT_RELU: return z > 0.0 ? z : 0.0;
    case ACT_SOFTPLUS: return z > 20.0 ? z : log1p(exp(z));    // torch.nn.Softplus (threshold 20)
    default: return z;
  }
}

// d act / dz from the pre-activation z and the output a
static inline double activation_slope(int act, double z, double a)
{
  switch (act) {
    case ACT_TANH: return 1.0 - a * a;
    case ACT_SIGMOID: return a * (1.0 - a);
    case ACT_RELU: return z > 0.0 ? 1.0 : 0.0;
    case ACT_SOFTPLUS: {
      if (z > 20.0) return 1.0;
      const double ez = exp(z);
      return ez / (ez + 1.0);
    }
    default: return 1.0;
  }
}

double FixSnapUQ::network(const std::vector<DenseLayer> &net, const double *b, double *grad)
{
  const int nl = (int) net.size();
  if ((int) nn_act.size() < 2 * nl) nn_act.resize(2 * nl);
  const double *in = b;
  for (int l = 0; l < nl; l++) {
    const DenseLayer &layer = net[l];
    std::vector<double> &z = nn_act[2 * l], &a = nn_act[2 * l + 1];
    z.resize(layer.nout);
    a.resize(layer.nout);
    for (int o = 0; o < layer.nout; o++) {
      const double *w = layer.weight.data() + (size_t) o * layer.nin;
      double sum = layer.bias[o];
      for (int k = 0; k < layer.nin; k++) sum += w[k] * in[k];
      z[o] = sum;
      a[o] = activate(layer.activation, sum);
    }
    in = a.data();
  }
  const double energy = nn_act[2 * nl - 1][0];
  if (grad == nullptr) return energy;
  nn_delta.assign(1, 1.0);
  for (int l = nl - 1; l >= 0; l--) {
    const DenseLayer &layer = net[l];
    const std::vector<double> &z = nn_act[2 * l], &a = nn_act[2 * l + 1];
    for (int o = 0; o < layer.nout; o++) nn_delta[o] *= activation_slope(layer.activation, z[o], a[o]);
    double *out = grad;
    if (l > 0) {
      nn_next.assign(layer.nin, 0.0);
      out = nn_next.data();
    } else
      std::fill(grad, grad + layer.nin, 0.0);
    for (int o = 0; o < layer.nout; o++) {
      const double d = nn_delta[o];
      const double *w = layer.weight.data() + (size_t) o * layer.nin;
      for (int k = 0; k < layer.nin; k++) out[k] += d * w[k];
    }
    if (l > 0) nn_delta.swap(nn_next);
  }
  return energy;
}

/* ----------------------------------------------------------------------
   every member's energy (kept in member_energy) and dE_k/dB_i (grad: (K, ncoeff)) of local atom i
------------------------------------------------------------------------- */

void FixSnapUQ::member_gradients(int i, const double *b, double *grad)
{
  if ((size_t) (i + 1) * nmembers > member_energy.size())
    member_energy.resize((size_t) atom->nmax * nmembers, 0.0);
  const int e = type2elem[atom->type[i]];
  const int ncoeff = block - 1;
  for (int k = 0; k < nmembers; k++)
    member_energy[(size_t) i * nmembers + k] =
        network(nets[k][e], b, grad ? grad + (size_t) k * ncoeff : nullptr);
}

/* ----------------------------------------------------------------------
   start of a run: evaluate on a multiple of N (as fix external pf/callback does for the hook),
   unless the atoms have not moved since the last evaluation on this step
------------------------------------------------------------------------- */

void FixSnapUQ::setup(int /*vflag*/)
{
  for (int k = 0; k < 3; k++) run_start[k] = gvec[NEVALUATIONS + k];
  if (verifyflag && !verified) verify_mean();
  if (update->ntimestep % nevery) return;
  const double t0 = MPI_Wtime();
  const uint64_t key = configuration_key();
  if (have_key && key == last_key && last_step == update->ntimestep) return;
  evaluate_timed(t0, key);
}

/* ----------------------------------------------------------------------
   the per-atom values of a descriptor compute at this step: computed once per step (setup checks the
   mean and then evaluates on the same step; LAMMPS resets invoked_peratom between runs)
------------------------------------------------------------------------- */

void FixSnapUQ::current(Compute *c)
{
  if (c->invoked_peratom != update->ntimestep) c->compute_peratom();
}

/* ----------------------------------------------------------------------
   the posterior mean must be the running pair style (checked once, as the hook does on attach):
   sum_i x_i . mean over all atoms against compute pair snap, when the pair energy was tallied
------------------------------------------------------------------------- */

void FixSnapUQ::verify_mean()
{
  if (c_pair == nullptr || update->eflag_global != update->ntimestep) return;
  current(c_sna);
  double **b = c_sna->array_atom;
  const int ncoeff = block - 1;
  const double theirs = c_pair->compute_scalar();
  double ours = 0.0;
  if (nnflag) {
    // the running mliap network must be the ensemble's mean or one of its members: the closest
    if (!forces)
      for (int i = 0; i < atom->nlocal; i++) member_gradients(i, b[i], nullptr);
    std::vector<double> local(nmembers, 0.0), totals(nmembers);
    for (int i = 0; i < atom->nlocal; i++)
      for (int k = 0; k < nmembers; k++) local[k] += member_energy[(size_t) i * nmembers + k];
    MPI_Allreduce(local.data(), totals.data(), nmembers, MPI_DOUBLE, MPI_SUM, world);
    double meanval = 0.0;
    for (double t : totals) meanval += t / nmembers;
    ours = meanval;
    for (double t : totals)
      if (fabs(t - theirs) < fabs(ours - theirs)) ours = t;
  } else {
    double ours_local = 0.0;
    for (int i = 0; i < atom->nlocal; i++) {
      const int off = type2elem[atom->type[i]] * block;
      double energy = mean[off];
      for (int k = 0; k < ncoeff; k++) energy += b[i][k] * mean[off + 1 + k];
      ours_local += energy;
    }
    MPI_Allreduce(&ours_local, &ours, 1, MPI_DOUBLE, MPI_SUM, world);
  }
  const double rel = fabs(ours - theirs) / std::max(fabs(theirs), 1e-300);
  if (rel > 1e-8)
    error->all(FLERR, "fix snap/uq: the {} {} does not match the running {} pair style: {} gives "
                      "{:.10g} eV, the pair style {:.10g} eV (relative difference {:.2e}); use the {} "
                      "written with it (or verify no)",
               nnflag ? "network ensemble" : "posterior", posterior_file, nnflag ? "mliap" : "snap",
               nnflag ? "its mean (or closest member) network energy" : "its mean coefficients' SNAP energy",
               ours, theirs, rel, nnflag ? "model files" : ".snapcoeff/.snapparam");
  verified = 1;
}

/* ---------------------------------------------------------------------- */

void FixSnapUQ::post_force(int /*vflag*/)
{
  if (update->ntimestep % nevery) return;
  const double t0 = MPI_Wtime();
  evaluate_timed(t0, configuration_key());
}

/* ----------------------------------------------------------------------
   evaluate configuration `key` now, remember it, and count the cost from t0 (MPI_Wtime) on
------------------------------------------------------------------------- */

void FixSnapUQ::evaluate_timed(double t0, uint64_t key)
{
  double descriptor_seconds = 0.0;
  evaluate(descriptor_seconds);
  last_key = key;
  have_key = true;
  last_step = update->ntimestep;
  gvec[NEVALUATIONS] += 1.0;
  gvec[TIME_DESCRIPTORS] += descriptor_seconds;
  gvec[TIME_UNCERTAINTY] += MPI_Wtime() - t0 - descriptor_seconds;
}

/* ----------------------------------------------------------------------
   the cost of this run's evaluations, in the log (rank 0's times)
------------------------------------------------------------------------- */

void FixSnapUQ::post_run()
{
  const double n = gvec[NEVALUATIONS] - run_start[0];
  if (comm->me != 0 || n <= 0.0) return;
  const double td = gvec[TIME_DESCRIPTORS] - run_start[1], tu = gvec[TIME_UNCERTAINTY] - run_start[2];
  utils::logmesg(lmp, "fix snap/uq {}: {:.0f} evaluations in this run: descriptors {:.4g} s ({:.4g} ms "
                      "each), uncertainty {:.4g} s ({:.4g} ms each), on MPI rank 0\n",
                 id, n, td, 1e3 * td / n, tu, 1e3 * tu / n);
}

/* ----------------------------------------------------------------------
   the per-atom products with the factor L (p, r), row-major
------------------------------------------------------------------------- */

// x_i^T Cov x_i = |x_i^T L|^2 for x_i = [1, b] in the block whose rows start at lblock; v: scratch (r)
FITSNAP_UQ_SIMD static double energy_variance(const double *b, int ncoeff, const double *lblock, int r,
                                              double *v)
{
  for (int c = 0; c < r; c++) v[c] = lblock[c];
  for (int k = 0; k < ncoeff; k++) {
    const double bk = b[k];
    const double *row = lblock + (size_t) (1 + k) * r;
    for (int c = 0; c < r; c++) v[c] += bk * row[c];
  }
  double var = 0.0;
  for (int c = 0; c < r; c++) var += v[c] * v[c];
  return var;
}

// vf (3, r) += D^T L for one type's force rows d = [x | y | z] (3 x ncoeff) and the rows of L from
// lrows on; x, y, z together, so each row of L is read once
FITSNAP_UQ_SIMD static void add_force_rows(const double *d, int ncoeff, const double *lrows, int r,
                                           double *vf)
{
  double *vx = vf, *vy = vf + r, *vz = vf + 2 * r;
  for (int k = 0; k < ncoeff; k++) {
    const double dx = d[k], dy = d[ncoeff + k], dz = d[2 * ncoeff + k];
    const double *row = lrows + (size_t) k * r;
    for (int c = 0; c < r; c++) {
      vx[c] += dx * row[c];
      vy[c] += dy * row[c];
      vz[c] += dz * row[c];
    }
  }
}

// one atom's stds into its per-atom values and the local sums {esum, fsum, emax, fmax, natoms}
static inline void tally(double *uqi, double estd, double fstd, double *local)
{
  uqi[0] = estd;
  uqi[1] = fstd;
  local[0] += estd;
  local[1] += fstd;
  local[2] = std::max(local[2], estd);
  local[3] = std::max(local[3], fstd);
  local[4] += 1.0;
}

/* ---------------------------------------------------------------------- */

void FixSnapUQ::evaluate(double &descriptor_seconds)
{
  const double t0 = MPI_Wtime();
  current(c_sna);
  double **b = c_sna->array_atom;    // B_i in the first ncoeff columns, then force rows or forces
  descriptor_seconds = MPI_Wtime() - t0;

  // per atom into uq; local sums {esum, fsum, emax, fmax, natoms}; total: what the total-energy std
  // needs, summed over ranks (linear: the group's row sum; ensemble: the members' total energies)
  double local[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
  std::vector<double> total;
  if (nnflag)
    per_atom_nn(b, local, total);
  else
    per_atom_linear(b, local, total);

  const int nt = (int) total.size();
  std::vector<double> total_all(nt);
  MPI_Allreduce(total.data(), total_all.data(), nt, MPI_DOUBLE, MPI_SUM, world);
  double sums[3] = {local[0], local[1], local[4]}, sums_all[3];
  MPI_Allreduce(sums, sums_all, 3, MPI_DOUBLE, MPI_SUM, world);
  double maxes[2] = {local[2], local[3]}, maxes_all[2];
  MPI_Allreduce(maxes, maxes_all, 2, MPI_DOUBLE, MPI_MAX, world);

  double var = 0.0;
  if (nnflag) {
    // population variance of the members' total energies
    double m = 0.0;
    for (double t : total_all) m += t / nt;
    for (double t : total_all) var += (t - m) * (t - m) / nt;
  } else {
    // |(sum_i x_i)^T L|^2
    const int r = rank;
    std::vector<double> v(r, 0.0);
    for (int k = 0; k < nt; k++) {
      const double xk = total_all[k];
      if (xk == 0.0) continue;
      const double *row = factor.data() + (size_t) k * r;
      for (int c = 0; c < r; c++) v[c] += xk * row[c];
    }
    for (int c = 0; c < r; c++) var += v[c] * v[c];
  }
  const double natoms = std::max(sums_all[2], 1.0);
  // the per-atom energy floor of the configuration, times its atoms (Posterior.predict's energy
  // rows are per atom), both parts scaled by the configuration's factors with an energy scale
  double efloor = noiseflag ? sums_all[2] * sums_all[2] * noise_energy : 0.0;
  if (!nnflag && escaleflag && sums_all[2] > 0.0) {
    double log_floor = 0.0;
    const double log_coef = energy_log_scales(total_all, sums_all[2], log_floor);
    var *= exp(log_coef);
    efloor *= exp(log_floor);
  }
  var += efloor;
  gvec[PE_STD] = sqrt(var);
  gvec[PE_ATOM_STD] = gvec[PE_STD] / natoms;
  gvec[ESTD_MAX] = maxes_all[0];
  gvec[ESTD_MEAN] = sums_all[0] / natoms;
  gvec[FSTD_MAX] = maxes_all[1];
  gvec[FSTD_MEAN] = sums_all[1] / natoms;

  const double value = gvec[measure];
  if (flagflag && value > flag_above) {
    write_flagged(value);
    gvec[NFLAGGED] += 1.0;
  }
  gvec[HALT] = 0.0;
  if (haltflag && value > halt_above) {
    gvec[HALT] = 1.0;
    if (comm->me == 0)
      utils::logmesg(lmp, "fitsnap-uq: stopped at step {}: {} = {:.4g} > halt threshold {:g}\n",
                     update->ntimestep, GLOBAL_NAMES[measure], value, halt_above);
    timer->force_timeout();    // ends the run cleanly, as fix halt ... error soft
  }
}

/* ----------------------------------------------------------------------
   linear posterior: per atom v = x_i^T L (r,), estd = |v| (with noise: sqrt(|v|^2 + noise_energy));
   fstd^2 = force_variance; total: the group's sum of rows x_i (p)
------------------------------------------------------------------------- */

void FixSnapUQ::per_atom_linear(double **b, double *local, std::vector<double> &total)
{
  const int nlocal = atom->nlocal;
  const int *type = atom->type;
  const int *mask = atom->mask;
  const int ncoeff = block - 1;
  const int p = (int) mean.size();
  const int r = rank;
  total.assign(p, 0.0);
  std::vector<double> v(r), work;
  const double *L = factor.data();
  const double evar_floor = noiseflag ? noise_energy : 0.0;

  for (int i = 0; i < nlocal; i++) {
    const int off = type2elem[type[i]] * block;
    const double *bi = b[i];
    if (!(mask[i] & groupbit)) {
      uq[i][0] = uq[i][1] = 0.0;
      continue;
    }
    const double estd =
        sqrt(energy_variance(bi, ncoeff, L + (size_t) off * r, r, v.data()) + evar_floor);
    total[off] += 1.0;
    for (int k = 0; k < ncoeff; k++) total[off + 1 + k] += bi[k];
    const double fstd = forces ? sqrt(force_variance(bi, off / block, work)) : 0.0;
    tally(uq[i], estd, fstd, local);
  }
}

/* ----------------------------------------------------------------------
   w * z with the range guard of a scale's standardized feature f (AtomScale._dot): beyond
   [lo[f], hi[f]] the feature counts as at the edge where going on would lower w * z, in full where
   it raises it; no range (empty lo): w * z
------------------------------------------------------------------------- */

static double guarded(double w, double z, const std::vector<double> &lo,
                      const std::vector<double> &hi, int f)
{
  if (lo.empty()) return w * z;
  const double edge = std::min(std::max(z, lo[f]), hi[f]);
  return w * edge + std::max(0.0, w * (z - edge));
}
/* ----------------------------------------------------------------------
   the variance of the force vector of the atom whose descriptor row (B, then the snad/atom force
   rows D) is bi and whose element is elem (eV/A)^2: sum over x, y, z of |D_x L|^2 (times
   exp(theta . z) with an atom scale), plus with noise yes 3 noise_force (times exp(phi . z) with an
   atom scale); work: scratch
------------------------------------------------------------------------- */

double FixSnapUQ::force_variance(const double *bi, int elem, std::vector<double> &work)
{
  const int ntypes = atom->ntypes;
  const int ncoeff = block - 1;
  const int r = rank;
  const int p = (int) mean.size();
  // scratch: D^T L (3 r), and with an atom scale D^T F (3 fit_rank), D^T G (3 me_rank), D (3 p)
  const size_t need = 3 * ((size_t) r + (scaleflag ? (size_t) fit_rank + me_rank + p : 0));
  if (work.size() < need) work.resize(need);
  std::fill(work.begin(), work.begin() + need, 0.0);
  double *vf = work.data();
  // snad/atom layout (after B): for LAMMPS type T, columns 3*ncoeff*(T-1) + [x|y|z]*ncoeff
  for (int t = 1; t <= ntypes; t++)
    add_force_rows(bi + ncoeff + 3 * ncoeff * (t - 1), ncoeff,
                   factor.data() + (size_t) (type2elem[t] * block + 1) * r, r, vf);
  double coef = 0.0;
  for (int c = 0; c < 3 * r; c++) coef += vf[c] * vf[c];
  double floor_var = noiseflag ? 3.0 * noise_force : 0.0;
  if (!scaleflag) return coef + floor_var;

  // the atom's features: sums over x, y, z of |D G|^2, |D F|^2, |D|^2 (D in the snapcoeff layout:
  // the columns of several types of one element add up)
  double *vs = vf + 3 * r, *vm = vs + 3 * fit_rank, *row = vm + 3 * me_rank;
  for (int t = 1; t <= ntypes; t++) {
    const double *d = bi + ncoeff + 3 * ncoeff * (t - 1);
    const int first = type2elem[t] * block + 1;
    add_force_rows(d, ncoeff, fit_factor.data() + (size_t) first * fit_rank, fit_rank, vs);
    add_force_rows(d, ncoeff, me_factor.data() + (size_t) first * me_rank, me_rank, vm);
    for (int c = 0; c < 3; c++)
      for (int k = 0; k < ncoeff; k++) row[c * p + first + k] += d[c * ncoeff + k];
  }
  double sums[3] = {0.0, 0.0, 0.0};
  for (int c = 0; c < 3 * me_rank; c++) sums[0] += vm[c] * vm[c];
  for (int c = 0; c < 3 * fit_rank; c++) sums[1] += vs[c] * vs[c];
  for (int c = 0; c < 3 * p; c++) sums[2] += row[c] * row[c];
  // theta . z and phi . z: the element's intercept, then the standardized log features
  const int nelem = (int) elements.size();
  double log_coef = scale_theta[elem], log_floor = scale_phi[elem];
  for (int f = 0; f < 3; f++) {
    const double z = (log(std::max(sums[f], scale_eps[f])) - scale_mu[f]) / scale_sd[f];
    log_coef += guarded(scale_theta[nelem + f], z, scale_zlo, scale_zhi, f);
    log_floor += guarded(scale_phi[nelem + f], z, scale_zlo, scale_zhi, f);
  }
  log_coef = std::min(std::max(log_coef, -50.0), 50.0);
  log_floor = std::min(std::max(log_floor, -50.0), 50.0);
  return coef * exp(log_coef) + floor_var * exp(log_floor);
}

/* ----------------------------------------------------------------------
   the per-configuration energy scale of the group's summed energy row x (p) of natoms atoms:
   returns theta . z and sets log_floor = phi . z (both clipped to [-50, 50]); z from the energy row
   per atom a = x / natoms: the composition (a in escale_cols, clipped to [0, 1]; 1 without columns),
   then the standardized logs of |a G|^2, |a F|^2, |a|^2 over FitSNAP's columns (no constant columns
   with bzeroflag 1) and natoms (Posterior.energy_log_scales)
------------------------------------------------------------------------- */

double FixSnapUQ::energy_log_scales(const std::vector<double> &x, double natoms,
                                    double &log_floor) const
{
  const int p = (int) mean.size();
  std::vector<double> a(p);
  for (int k = 0; k < p; k++) a[k] = x[k] / natoms;
  double feats[4] = {0.0, 0.0, 0.0, natoms};
  // |a G|^2 and |a F|^2 (G, F: (p, rank) row-major)
  const std::pair<const std::vector<double> *, int> parts[2] = {{&me_factor, me_rank},
                                                                {&fit_factor, fit_rank}};
  for (int f = 0; f < 2; f++) {
    const int r = parts[f].second;
    const double *m = parts[f].first->data();
    std::vector<double> v(r, 0.0);
    for (int k = 0; k < p; k++) {
      if (a[k] == 0.0) continue;
      const double *row = m + (size_t) k * r;
      for (int c = 0; c < r; c++) v[c] += a[k] * row[c];
    }
    for (int c = 0; c < r; c++) feats[f] += v[c] * v[c];
  }
  for (int k = 0; k < p; k++)
    if (!(bzeroflag && k % block == 0)) feats[2] += a[k] * a[k];
  const int nint = escale_cols.empty() ? 1 : (int) escale_cols.size();
  double log_coef = 0.0;
  log_floor = 0.0;
  for (int j = 0; j < nint; j++) {
    const double comp =
        escale_cols.empty() ? 1.0 : std::min(std::max(a[escale_cols[j]], 0.0), 1.0);
    log_coef += escale_theta[j] * comp;
    log_floor += escale_phi[j] * comp;
  }
  for (int f = 0; f < 4; f++) {
    const double z = (log(std::max(feats[f], escale_eps[f])) - escale_mu[f]) / escale_sd[f];
    log_coef += guarded(escale_theta[nint + f], z, escale_zlo, escale_zhi, f);
    log_floor += guarded(escale_phi[nint + f], z, escale_zlo, escale_zhi, f);
  }
  log_floor = std::min(std::max(log_floor, -50.0), 50.0);
  return std::min(std::max(log_coef, -50.0), 50.0);
}

/* ----------------------------------------------------------------------
   network ensemble: per atom the population std over the K members of its energy E_k,i and the
   square root of the trace of the members' force covariance; total: each member's group energy (K)
------------------------------------------------------------------------- */

void FixSnapUQ::per_atom_nn(double **b, double *local, std::vector<double> &total)
{
  const int nlocal = atom->nlocal;
  const int *mask = atom->mask;
  const int ncoeff = block - 1;
  const int k_ = nmembers;
  total.assign(k_, 0.0);
  // without forces the compute does not call the networks: the energies only, here
  if (!forces)
    for (int i = 0; i < nlocal; i++) member_gradients(i, b[i], nullptr);

  for (int i = 0; i < nlocal; i++) {
    if (!(mask[i] & groupbit)) {
      uq[i][0] = uq[i][1] = 0.0;
      continue;
    }
    const double *e = member_energy.data() + (size_t) i * k_;
    double em = 0.0, evar = 0.0;
    for (int k = 0; k < k_; k++) em += e[k] / k_;
    for (int k = 0; k < k_; k++) {
      evar += (e[k] - em) * (e[k] - em) / k_;
      total[k] += e[k];
    }
    double fstd = 0.0;
    if (forces) {
      const double *f = b[i] + ncoeff;    // (K, 3)
      double fvar = 0.0;
      for (int c = 0; c < 3; c++) {
        double fm = 0.0;
        for (int k = 0; k < k_; k++) fm += f[3 * k + c] / k_;
        for (int k = 0; k < k_; k++) fvar += (f[3 * k + c] - fm) * (f[3 * k + c] - fm) / k_;
      }
      fstd = sqrt(fvar);
    }
    tally(uq[i], sqrt(evar), fstd, local);
  }
}

/* ----------------------------------------------------------------------
   fingerprint of the configuration: step, atoms (tag, fractional coordinates mod 1 to 1e-9), box
------------------------------------------------------------------------- */

static inline uint64_t mix64(uint64_t z)
{
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t FixSnapUQ::configuration_key()
{
  double **x = atom->x;
  tagint *tag = atom->tag;
  uint64_t local = 0;
  double lamda[3], xi[3];
  for (int i = 0; i < atom->nlocal; i++) {
    xi[0] = x[i][0];
    xi[1] = x[i][1];
    xi[2] = x[i][2];
    domain->x2lamda(xi, lamda);
    uint64_t h = mix64((uint64_t) tag[i]);
    for (double l : lamda) {
      double f = l - floor(l);
      auto q = (int64_t) llround(f * 1e9) % 1000000000LL;
      h = mix64(h ^ (uint64_t) q);
    }
    local += h;    // order-independent: the same set of atoms on any decomposition
  }
  uint64_t all = 0;
  MPI_Allreduce(&local, &all, 1, MPI_UINT64_T, MPI_SUM, world);
  for (double hk : domain->h) {
    uint64_t bits;
    memcpy(&bits, &hk, sizeof(bits));
    all = mix64(all ^ bits);
  }
  return mix64(all ^ (uint64_t) atom->natoms);
}

/* ----------------------------------------------------------------------
   append the configuration to the flag file (extended XYZ), gathered on rank 0
------------------------------------------------------------------------- */

void FixSnapUQ::write_flagged(double value)
{
  const int nlocal = atom->nlocal;
  const int width = 10;    // tag type x y z fx fy fz estd fstd
  std::vector<double> buf;
  buf.reserve((size_t) nlocal * width);
  for (int i = 0; i < nlocal; i++) {
    buf.push_back((double) atom->tag[i]);
    buf.push_back((double) atom->type[i]);
    for (int k = 0; k < 3; k++) buf.push_back(atom->x[i][k] - domain->boxlo[k]);
    for (int k = 0; k < 3; k++) buf.push_back(atom->f[i][k]);
    buf.push_back(uq[i][0]);
    buf.push_back(uq[i][1]);
  }
  int n = (int) buf.size();
  std::vector<int> counts(comm->nprocs), displs(comm->nprocs, 0);
  MPI_Gather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, world);
  std::vector<double> all;
  if (comm->me == 0) {
    for (int k = 1; k < comm->nprocs; k++) displs[k] = displs[k - 1] + counts[k - 1];
    all.resize((size_t) displs[comm->nprocs - 1] + counts[comm->nprocs - 1]);
  }
  MPI_Gatherv(buf.data(), n, MPI_DOUBLE, all.data(), counts.data(), displs.data(), MPI_DOUBLE, 0,
              world);
  if (comm->me != 0 || flag_fp == nullptr) return;

  const size_t natoms = all.size() / width;
  std::vector<size_t> order(natoms);
  for (size_t k = 0; k < natoms; k++) order[k] = k;
  std::sort(order.begin(), order.end(),
            [&all](size_t a, size_t c) { return all[a * width] < all[c * width]; });
  const double *h = domain->h;    // xprd yprd zprd yz xz xy
  std::string text = fmt::format("{}\n", natoms);
  text += fmt::format("Lattice=\"{:.10f} 0 0 {:.10f} {:.10f} 0 {:.10f} {:.10f} {:.10f}\" "
                      "Properties=species:S:1:pos:R:3:forces:R:3:uq_estd:R:1:uq_fstd:R:1 "
                      "pbc=\"{} {} {}\" step={} measure={} value={:.10g}\n",
                      h[0], h[5], h[1], h[4], h[3], h[2], domain->xperiodic ? "T" : "F",
                      domain->yperiodic ? "T" : "F", domain->zperiodic ? "T" : "F",
                      update->ntimestep, GLOBAL_NAMES[measure], value);
  for (size_t k : order) {
    const double *a = &all[k * width];
    text += fmt::format("{} {:.10f} {:.10f} {:.10f} {:.10g} {:.10g} {:.10g} {:.10g} {:.10g}\n",
                        elements[type2elem[(int) a[1]]], a[2], a[3], a[4], a[5], a[6], a[7], a[8],
                        a[9]);
  }
  fputs(text.c_str(), flag_fp);    // one frame per write, flushed: a crash leaves whole frames
  fflush(flag_fp);
}

/* ---------------------------------------------------------------------- */

double FixSnapUQ::compute_scalar()
{
  return gvec[measure];
}

double FixSnapUQ::compute_vector(int n)
{
  return gvec[n];
}

/* ----------------------------------------------------------------------
   per-atom values travel with their atoms
------------------------------------------------------------------------- */

void FixSnapUQ::grow_arrays(int nmax)
{
  memory->grow(uq, nmax, 2, "snap/uq:uq");
  array_atom = uq;
}

void FixSnapUQ::set_arrays(int i)
{
  uq[i][0] = uq[i][1] = 0.0;    // a new atom has no value until the next evaluation
}

void FixSnapUQ::copy_arrays(int i, int j, int /*delflag*/)
{
  uq[j][0] = uq[i][0];
  uq[j][1] = uq[i][1];
}

int FixSnapUQ::pack_exchange(int i, double *buf)
{
  buf[0] = uq[i][0];
  buf[1] = uq[i][1];
  return 2;
}

int FixSnapUQ::unpack_exchange(int nlocal, double *buf)
{
  uq[nlocal][0] = buf[0];
  uq[nlocal][1] = buf[1];
  return 2;
}

double FixSnapUQ::memory_usage()
{
  return (double) atom->nmax * 2 * sizeof(double) + (double) factor.size() * sizeof(double);
}

/* ----------------------------------------------------------------------
   the posterior file (text; written by lammps_hooks.native.write_plugin_posterior):
     fitsnap-uq-plugin-posterior 1
     elements NELEM E1 .. En
     block B                      coefficients per element block (constant + descriptors)
     source analytic|samples
     rcutfac X / rfac0 X / twojmax N / rmin0 X / bzeroflag N / quadraticflag N / switchflag N /
     bnormflag N / wselfallflag N / chemflag N
     radelem R1 .. Rn / wj W1 .. Wn
     mean P  v_1 .. v_P
     factor P R  (P rows of R values: Cov = L L^T)
     end
   '#' starts a comment. Read on rank 0, broadcast to all ranks.
------------------------------------------------------------------------- */

void FixSnapUQ::read_posterior(const std::string &file)
{
  std::string text;
  int ok = 1;
  if (comm->me == 0) {
    std::ifstream in(file);
    if (!in) {
      ok = 0;
    } else {
      std::stringstream ss;
      ss << in.rdbuf();
      text = ss.str();
    }
  }
  MPI_Bcast(&ok, 1, MPI_INT, 0, world);
  if (!ok)
    error->all(FLERR, "fix snap/uq: cannot read posterior file {} (write it with "
                      "'fitsnap-uq build-plugin --posterior P.posterior.npz --out {}')", file, file);
  // the length as a 64-bit count, the text in pieces of at most INT_MAX bytes (MPI counts are int)
  bigint len = (bigint) text.size();
  MPI_Bcast(&len, 1, MPI_LMP_BIGINT, 0, world);
  text.resize((size_t) len);
  for (bigint off = 0; off < len; off += MAXSMALLINT) {
    const int piece = (int) std::min<bigint>(len - off, MAXSMALLINT);
    MPI_Bcast(&text[off], piece, MPI_CHAR, 0, world);
  }

  std::istringstream lines(text);
  std::string line, tokens;
  while (std::getline(lines, line)) {
    auto hash = line.find('#');
    if (hash != std::string::npos) line.erase(hash);
    tokens += line + " ";
  }
  // an upper bound of the values the file can hold: counts are checked against it before any
  // allocation, so a corrupt or hostile count is an error naming the file, not std::bad_alloc
  bigint nwords = 0;
  {
    std::istringstream all(tokens);
    std::string w;
    while (all >> w) nwords++;
  }
  std::istringstream in(tokens);
  auto bad = [&](const std::string &what) {
    error->all(FLERR, "fix snap/uq: posterior file {}: {}", file, what);
  };
  auto fits = [&](const std::string &key, bigint nvalues) {
    if (nvalues > nwords)
      bad(fmt::format("'{}' announces {} values but the file holds only {} words (corrupt or "
                      "truncated file?)", key, nvalues, nwords));
  };
  auto word = [&](const std::string &key) {
    std::string w;
    if (!(in >> w)) bad("unexpected end of file in '" + key + "'");
    return w;
  };
  auto number = [&](const std::string &key) {
    std::string w = word(key);
    char *end = nullptr;
    double val = strtod(w.c_str(), &end);
    if (end == w.c_str() || *end != '\0') bad("'" + key + "' expects a number, got '" + w + "'");
    return val;
  };
  auto checknum = [&](const std::string &w, const std::string &key) {
    char *end = nullptr;
    strtod(w.c_str(), &end);
    if (end == w.c_str() || *end != '\0') bad("'" + key + "' expects a number, got '" + w + "'");
  };
  auto count = [&](const std::string &key) {
    double val = number(key);
    if (val < 0 || val != floor(val) || val > 1e9) bad("'" + key + "' expects a count");
    return (long) val;
  };

  std::string magic = word("header");
  if (magic != POSTERIOR_MAGIC)
    bad(fmt::format("not a fitsnap-uq plugin posterior (first word '{}', expected '{}'); write it "
                    "with 'fitsnap-uq build-plugin --posterior P.posterior.npz --out P.uq'",
                    magic, POSTERIOR_MAGIC));
  const long version = count("version");
  if (version < 1 || version > POSTERIOR_VERSION)
    bad(fmt::format("format version {} is not 1 .. {}; rewrite it with this fitsnap-uq", version,
                    POSTERIOR_VERSION));

  std::map<std::string, std::string> scalars;
  const std::vector<std::string> scalar_keys = {"rcutfac",       "rfac0",     "twojmax",
                                                "rmin0",         "bzeroflag", "quadraticflag",
                                                "switchflag",    "bnormflag", "wselfallflag",
                                                "chemflag"};
  bool have_mean = false, have_factor = false, have_end = false;
  long scale_nelem = -1;
  bool have_fit_factor = false, have_me_factor = false;
  std::map<std::string, std::vector<double> *> scale_vectors = {
      {"scale_theta", &scale_theta},   {"scale_phi", &scale_phi},   {"scale_mu", &scale_mu},
      {"scale_sd", &scale_sd},         {"scale_eps", &scale_eps},   {"scale_zlo", &scale_zlo},
      {"scale_zhi", &scale_zhi},       {"escale_theta", &escale_theta},
      {"escale_phi", &escale_phi},     {"escale_mu", &escale_mu},   {"escale_sd", &escale_sd},
      {"escale_eps", &escale_eps},     {"escale_zlo", &escale_zlo}, {"escale_zhi", &escale_zhi}};
  long escale_k = -1;
  bool have_escale_cols = false;
  // a P x R matrix, row-major, after 'mean' (P = its values)
  auto matrix = [&](const std::string &key, std::vector<double> &dest) {
    long n = count(key);
    long r = count(key);
    if (!have_mean || n != (long) mean.size())
      bad(fmt::format("'{}' has {} rows but 'mean' has {} values", key, n, mean.size()));
    if (r > MAX_FACTOR_RANK)
      bad(fmt::format("'{}' has rank {}, more than {} (the factor is P x R with R the live "
                      "coefficients or the samples)", key, r, MAX_FACTOR_RANK));
    fits(key, (bigint) n * (bigint) r);
    dest.resize((size_t) n * r);
    for (size_t k = 0; k < dest.size(); k++) dest[k] = number(key);
    for (double val : dest)
      if (!std::isfinite(val)) bad("'" + key + "' has a non-finite value");
    return (int) r;
  };
  std::string key;
  while (in >> key) {
    if (key == "end") {
      have_end = true;
      break;
    } else if (key == "elements") {
      long n = count(key);
      if (n < 1) bad("'elements' needs at least one element");
      elements.clear();
      for (long k = 0; k < n; k++) elements.push_back(word(key));
    } else if (key == "block") {
      block = (int) count(key);
    } else if (key == "model") {
      std::string kind = word(key);
      if (kind != "linear" && kind != "nn") bad("'model' must be linear or nn, not '" + kind + "'");
      nnflag = (kind == "nn");
    } else if (key == "members") {
      if (elements.empty()) bad("'members' must come after 'elements'");
      long k = count(key);
      if (k < 1 || k > MAX_MEMBERS) bad(fmt::format("'members' must be 1 .. {}", MAX_MEMBERS));
      nmembers = (int) k;
      nets.assign(k, std::vector<std::vector<DenseLayer>>(elements.size()));
    } else if (key == "network") {
      // network M E NLAYERS, then per layer: layer NIN NOUT ACTIVATION and NOUT x (bias, NIN weights)
      if (nets.empty()) bad("'network' must come after 'members'");
      long m = count(key), e = count(key), nl = count(key);
      if (m >= nmembers || e >= (long) elements.size() || nl < 1)
        bad(fmt::format("'network {} {} {}': member, element or layer count out of range", m, e, nl));
      auto &net = nets[m][e];
      net.clear();
      for (long l = 0; l < nl; l++) {
        if (word(key) != "layer") bad(fmt::format("network {} {}: expected 'layer' {}", m, e, l));
        DenseLayer layer;
        layer.nin = (int) count("layer");
        layer.nout = (int) count("layer");
        std::string act = word("layer");
        layer.activation = -1;
        for (int a = 0; a < 5; a++)
          if (act == ACTIVATIONS[a]) layer.activation = a;
        if (layer.activation < 0)
          bad(fmt::format("network {} {}: unknown activation '{}' (linear tanh sigmoid relu softplus)",
                          m, e, act));
        if (layer.nin < 1 || layer.nout < 1) bad(fmt::format("network {} {}: empty layer", m, e));
        fits("layer", (bigint) layer.nout * (layer.nin + 1));
        layer.weight.resize((size_t) layer.nout * layer.nin);
        layer.bias.resize(layer.nout);
        for (int o = 0; o < layer.nout; o++) {
          layer.bias[o] = number("layer");
          for (int k = 0; k < layer.nin; k++) layer.weight[(size_t) o * layer.nin + k] = number("layer");
        }
        net.push_back(std::move(layer));
      }
    } else if (key == "source") {
      source = word(key);
    } else if (key == "radelem" || key == "wj") {
      if (elements.empty()) bad("'" + key + "' must come after 'elements'");
      auto &dest = (key == "radelem") ? radelem_txt : wj_txt;
      dest.clear();
      for (size_t k = 0; k < elements.size(); k++) {
        std::string w = word(key);
        checknum(w, key);
        dest.push_back(w);
      }
    } else if (std::find(scalar_keys.begin(), scalar_keys.end(), key) != scalar_keys.end()) {
      std::string w = word(key);
      checknum(w, key);
      scalars[key] = w;
    } else if (key == "mean") {
      long n = count(key);
      fits(key, n);
      mean.resize(n);
      for (long k = 0; k < n; k++) mean[k] = number(key);
      have_mean = true;
    } else if (key == "factor") {
      rank = matrix(key, factor);
      have_factor = true;
    } else if (key == "noise") {
      noise_energy = number(key);
      noise_force = number(key);
      if (!(noise_energy >= 0.0 && noise_force >= 0.0 && std::isfinite(noise_energy) &&
            std::isfinite(noise_force)))
        bad("'noise' expects two finite variances >= 0");
      have_noise = 1;
    } else if (key == "atom_scale") {
      scale_nelem = count(key);
      scaleflag = 1;
    } else if (key == "energy_scale") {
      if (version < 3) bad("'energy_scale' needs file version 3");
      escale_k = count(key);
      escaleflag = 1;
    } else if (key == "escale_cols") {
      long n = count(key);
      fits(key, n);
      escale_cols.resize(n);
      for (long k = 0; k < n; k++) escale_cols[k] = (int) count(key);
      have_escale_cols = true;
    } else if (scale_vectors.count(key)) {
      long n = count(key);
      fits(key, n);
      auto &dest = *scale_vectors[key];
      dest.resize(n);
      for (long k = 0; k < n; k++) dest[k] = number(key);
    } else if (key == "scale_fitfactor") {
      fit_rank = matrix(key, fit_factor);
      have_fit_factor = true;
    } else if (key == "scale_mefactor") {
      me_rank = matrix(key, me_factor);
      have_me_factor = true;
    } else
      bad("unknown key '" + key + "'");
  }
  if (!have_end) bad("missing 'end' (truncated file?)");
  if (elements.empty()) bad("missing key 'elements'");
  if (block < 2) bad("missing or bad key 'block'");
  if (nnflag) {
    if (nmembers < 1) bad("missing key 'members' (model nn)");
    for (int m = 0; m < nmembers; m++)
      for (size_t e = 0; e < elements.size(); e++) {
        const auto &net = nets[m][e];
        if (net.empty()) bad(fmt::format("missing 'network {} {}'", m, e));
        int nin = block - 1;
        for (const auto &layer : net) {
          if (layer.nin != nin)
            bad(fmt::format("network {} {}: a layer reads {} values, {} expected", m, e, layer.nin, nin));
          nin = layer.nout;
        }
        if (nin != 1) bad(fmt::format("network {} {}: the last layer has {} outputs, not 1", m, e, nin));
        for (const auto &layer : net)
          for (double val : layer.weight)
            if (!std::isfinite(val)) bad(fmt::format("network {} {}: a non-finite weight", m, e));
      }
    if (have_mean || have_factor) bad("'mean' and 'factor' are for model linear");
    source = "ensemble";
  } else {
  if (!have_mean) bad("missing key 'mean'");
  if (!have_factor) bad("missing key 'factor'");
  }
  if (!nnflag && (long) mean.size() != (long) block * (long) elements.size())
    bad(fmt::format("'mean' has {} values, expected block {} x {} elements", mean.size(), block,
                    elements.size()));
  if (radelem_txt.size() != elements.size()) bad("missing key 'radelem'");
  if (wj_txt.size() != elements.size()) bad("missing key 'wj'");
  for (const char *k : {"rcutfac", "rfac0", "twojmax", "rmin0", "bzeroflag", "quadraticflag"})
    if (!scalars.count(k)) bad(fmt::format("missing key '{}'", k));
  for (double val : mean)
    if (!std::isfinite(val)) bad("'mean' has a non-finite value");
  // a scale's optional feature range PREFIX_zlo/_zhi: n values each, both or neither, lo <= hi
  auto check_range = [&](const std::string &prefix, const std::vector<double> &lo,
                         const std::vector<double> &hi, size_t n) {
    if (lo.size() != hi.size() || (!lo.empty() && lo.size() != n))
      bad(fmt::format("'{0}_zlo' and '{0}_zhi' need {1} values each, both or neither", prefix, n));
    for (size_t f = 0; f < lo.size(); f++)
      if (!(lo[f] <= hi[f]) || !std::isfinite(lo[f]) || !std::isfinite(hi[f]))
        bad(fmt::format("'{0}_zlo' must be <= '{0}_zhi', both finite", prefix));
  };
  if (scaleflag) {
    if (nnflag) bad("'atom_scale' is for model linear");
    const size_t nz = elements.size() + 3;
    if (scale_nelem != (long) elements.size())
      bad(fmt::format("'atom_scale' has {} elements, the file {}", scale_nelem, elements.size()));
    if (scale_theta.size() != nz || scale_phi.size() != nz)
      bad(fmt::format("'scale_theta' and 'scale_phi' need {} values each (elements + 3)", nz));
    if (scale_mu.size() != 3 || scale_sd.size() != 3 || scale_eps.size() != 3)
      bad("'scale_mu', 'scale_sd' and 'scale_eps' need 3 values each");
    if (!have_fit_factor) bad("missing key 'scale_fitfactor' (atom_scale)");
    if (!have_me_factor) bad("missing key 'scale_mefactor' (atom_scale)");
    for (const auto *vec : {&scale_theta, &scale_phi, &scale_mu, &scale_eps})
      for (double val : *vec)
        if (!std::isfinite(val)) bad("an 'atom_scale' value is not finite");
    for (double val : scale_sd)
      if (!(val > 0.0 && std::isfinite(val))) bad("'scale_sd' must be > 0");
    check_range("scale", scale_zlo, scale_zhi, 3);
  } else if (!scale_theta.empty() || !scale_phi.empty() || !scale_mu.empty() || !scale_sd.empty() ||
             !scale_eps.empty() || !scale_zlo.empty() || !scale_zhi.empty() ||
             ((have_fit_factor || have_me_factor) && !escaleflag))
    bad("'scale_...' keys need 'atom_scale NELEM' before them (the factors: or 'energy_scale K')");
  if (escaleflag) {
    if (nnflag) bad("'energy_scale' is for model linear");
    if (!have_escale_cols) bad("missing key 'escale_cols' (energy_scale)");
    const long nint = escale_cols.empty() ? 1 : (long) escale_cols.size();
    if (escale_k != nint)
      bad(fmt::format("'energy_scale' has {} intercepts but 'escale_cols' {} columns", escale_k,
                      escale_cols.size()));
    for (int c : escale_cols)
      if (c < 0 || c >= (int) mean.size())
        bad(fmt::format("an 'escale_cols' column {} is not 0 .. {}", c, (long) mean.size() - 1));
    const size_t nz = (size_t) nint + 4;
    if (escale_theta.size() != nz || escale_phi.size() != nz)
      bad(fmt::format("'escale_theta' and 'escale_phi' need {} values each (intercepts + 4)", nz));
    if (escale_mu.size() != 4 || escale_sd.size() != 4 || escale_eps.size() != 4)
      bad("'escale_mu', 'escale_sd' and 'escale_eps' need 4 values each");
    if (!have_fit_factor) bad("missing key 'scale_fitfactor' (energy_scale)");
    if (!have_me_factor) bad("missing key 'scale_mefactor' (energy_scale)");
    for (const auto *vec : {&escale_theta, &escale_phi, &escale_mu, &escale_eps})
      for (double val : *vec)
        if (!std::isfinite(val)) bad("an 'energy_scale' value is not finite");
    for (double val : escale_sd)
      if (!(val > 0.0 && std::isfinite(val))) bad("'escale_sd' must be > 0");
    check_range("escale", escale_zlo, escale_zhi, 4);
  } else if (have_escale_cols || !escale_theta.empty() || !escale_phi.empty() ||
             !escale_mu.empty() || !escale_sd.empty() || !escale_eps.empty() ||
             !escale_zlo.empty() || !escale_zhi.empty())
    bad("'escale_...' keys need 'energy_scale K' before them");

  rcutfac_txt = scalars["rcutfac"];
  rfac0_txt = scalars["rfac0"];
  twojmax_txt = scalars["twojmax"];
  auto flag = [&](const char *k, const char *dflt) {
    return scalars.count(k) ? scalars[k] : std::string(dflt);
  };
  chemflag = scalars.count("chemflag") && std::stod(scalars["chemflag"]) != 0.0;
  bzeroflag = std::stod(scalars["bzeroflag"]) != 0.0;
  options_txt = fmt::format("rmin0 {} bzeroflag {} quadraticflag {} switchflag {} bnormflag {} "
                            "wselfallflag {}",
                            scalars["rmin0"], scalars["bzeroflag"], scalars["quadraticflag"],
                            flag("switchflag", "1"), flag("bnormflag", "0"), flag("wselfallflag", "0"));
}
