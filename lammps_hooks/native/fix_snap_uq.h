/* fitsnap-uq: fix snap/uq, per-atom and global SNAP uncertainty inside a plain LAMMPS run.
   GPL-2.0-only, like fitsnap-uq and LAMMPS. See README.md in this folder for the syntax. */

#ifndef FITSNAP_UQ_FIX_SNAP_UQ_H
#define FITSNAP_UQ_FIX_SNAP_UQ_H

#include "fix.h"

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace LAMMPS_NS {

class FixSnapUQ : public Fix {
 public:
  FixSnapUQ(class LAMMPS *, int, char **);
  ~FixSnapUQ() override;
  int setmask() override;
  void init() override;
  void setup(int) override;
  void post_force(int) override;
  void post_run() override;
  double compute_scalar() override;
  double compute_vector(int) override;

  void grow_arrays(int) override;
  void copy_arrays(int, int, int) override;
  void set_arrays(int) override;
  int pack_exchange(int, double *) override;
  int unpack_exchange(int, double *) override;
  double memory_usage() override;

 private:
  enum { PE_STD, PE_ATOM_STD, ESTD_MAX, ESTD_MEAN, FSTD_MAX, FSTD_MEAN, NFLAGGED, HALT,
         NEVALUATIONS, TIME_DESCRIPTORS, TIME_UNCERTAINTY, NGLOBAL };

  // posterior (see lammps_hooks/native.py: write_plugin_posterior for the file format)
  std::string posterior_file;
  std::vector<std::string> elements;     // element names, in the posterior's block order
  int block;                             // coefficients per element block (constant + descriptors)
  int rank;                              // columns of the spread factor L (Cov = L L^T)
  std::vector<double> mean;              // (p,)
  std::vector<double> factor;            // (p, rank), row-major
  std::string source;                    // analytic | samples
  std::string snap_args;                 // rcutfac rfac0 twojmax radelem.. wj.. options, per type
  std::string rcutfac_txt, rfac0_txt, twojmax_txt, options_txt;  // as written in the file
  int chemflag;                          // explicit multi-element SNAP: chem keyword of the compute
  std::vector<std::string> radelem_txt, wj_txt;                  // per element, as written

  // noise floors (file version 2, optional; variances): Energy (eV/atom)^2, Force (eV/A)^2
  int have_noise;
  double noise_energy, noise_force;
  // per-atom force scale (file version 2, optional; fitsnap_uq/linear/atomscale.py): force
  // component x of atom j gets exp(theta . z_j) |D_jx L|^2 + exp(phi . z_j) noise_force, with
  // z_j = [one-hot element, (log(max(s_f, eps_f)) - mu_f) / sd_f for the sums s over x, y, z of
  // |D_jx G|^2 (model error M = G G^T), |D_jx F|^2 (fit S = F F^T), |D_jx|^2]
  int scaleflag;
  std::vector<double> scale_theta, scale_phi;       // (nelem + 3)
  std::vector<double> scale_mu, scale_sd, scale_eps;    // (3)
  std::vector<double> scale_zlo, scale_zhi;            // (3) or empty: no clipping
  int fit_rank, me_rank;
  std::vector<double> fit_factor, me_factor;        // (p, fit_rank), (p, me_rank), row-major
  // per-configuration energy scale (file version 3, optional; fitsnap_uq/linear/atomscale.py
  // energy_features): the total-energy variance |X L|^2 gets exp(theta . z) and its floor
  // N^2 noise_energy exp(phi . z), z = [composition (a's values in escale_cols, clipped to [0, 1];
  // 1 without columns), (log(max(s_f, eps_f)) - mu_f) / sd_f for s = |a G|^2, |a F|^2, |a|^2 (FitSNAP's
  // columns), N], a = X / N the configuration's energy row per atom
  int escaleflag;
  std::vector<int> escale_cols;                     // (K) or empty (one intercept)
  std::vector<double> escale_theta, escale_phi;     // (K + 4)
  std::vector<double> escale_mu, escale_sd, escale_eps;    // (4)
  std::vector<double> escale_zlo, escale_zhi;              // (4) or empty: no clipping
  int bzeroflag;                                     // 1: the constant columns are not FitSNAP's
  double energy_log_scales(const std::vector<double> &x, double natoms, double &log_floor) const;

  // a network ensemble instead (`model nn` in the file): K members, one network per element each,
  // every network a stack of dense layers nodes = act(W x + b) with W (nout, nin) row-major
  struct DenseLayer {
    int nin, nout, activation;    // activation: one of ACTIVATIONS
    std::vector<double> weight, bias;
  };
  int nnflag;
  int nmembers;
  std::vector<std::vector<std::vector<DenseLayer>>> nets;    // [member][element]
  std::vector<double> member_energy;                         // (nlocal, K) of the latest pass, eV
  std::vector<std::vector<double>> nn_act;                   // scratch: each layer's output
  std::vector<double> nn_delta, nn_next;                     // scratch: backward pass

  // options
  int forces;                 // 1: per-atom force std (compute snad/atom)
  int noiseflag;              // 1: the noise floors are added (keyword noise yes)
  int measure;                // index into the global vector that flag/halt threshold
  int flagflag, haltflag, verifyflag;
  double flag_above, halt_above;
  std::string flag_file;
  FILE *flag_fp;
  std::vector<int> type2elem;  // (ntypes + 1), element index of each LAMMPS type

  // the computes this fix owns: compute snap/uq/atom (B, then the force rows) and compute pair snap
  std::string id_sna, id_pair;
  class Compute *c_sna, *c_pair;

  double **uq;                 // (nmax, 2): per-atom energy std (eV), force std (eV/A)
  double gvec[NGLOBAL];
  double run_start[3];    // NEVALUATIONS, TIME_DESCRIPTORS, TIME_UNCERTAINTY at the start of the run
  int verified;
  bool have_key;
  uint64_t last_key;
  bigint last_step;

  void read_posterior(const std::string &);
  double force_variance(const double *bi, int elem, std::vector<double> &work);
  void evaluate_timed(double t0, uint64_t key);
  void evaluate(double &descriptor_seconds);
  void per_atom_linear(double **b, double *local, std::vector<double> &total);
  void per_atom_nn(double **b, double *local, std::vector<double> &total);
  int expected_columns() const;
  double network(const std::vector<DenseLayer> &net, const double *b, double *grad);
  void member_gradients(int i, const double *b, double *grad);
  void connect_compute();
  void verify_mean();
  void current(class Compute *c);
  uint64_t configuration_key();
  void write_flagged(double);
};

}    // namespace LAMMPS_NS

#endif
