/* fitsnap-uq: SNAP bispectrum components of one atom and their derivatives with respect to each
   neighbour's position, in one pass. GPL-2.0-only, like fitsnap-uq and LAMMPS.

   Written from the published method (Thompson et al., J. Comp. Phys. 285, 316 (2015); Wood and
   Thompson, J. Chem. Phys. 148, 241721 (2018)), in the conventions of LAMMPS' compute sna/atom and
   compute snad/atom so that the numbers agree with them (tests/test_plugin.py checks both):

   * a neighbour at r = (x, y, z) from the centre, |r| < rcut, maps to the 3-sphere through
     theta0 = rfac0 * pi * (|r| - rmin0) / (rcut - rmin0), z0 = |r| / tan(theta0); with
     r0 = sqrt(|r|^2 + z0^2) its Cayley-Klein parameters are a = (z0 - i z) / r0, b = (y - i x) / r0;
   * U^j (j = 0 .. twojmax, (j+1) x (j+1) complex) are the Wigner matrices built from a and b by the
     standard recursion in j; the atom's density is U_tot^j = 1 (the central atom, on the diagonal)
     + sum_neighbours w_nb fc(|r|) U^j(r), fc the cosine switching function between rmin0 and rcut;
   * Z^j_{j1 j2} = sum CG(j1 m1 j2 m2 | j m) CG(j1 m1' j2 m2' | j m') U^j1_{m1' m1} U^j2_{m2' m2}
     (divided by j + 1 with bnormflag), and B_{j1 j2 j} = Re sum_{m, m'} conj(U^j_{m' m}) Z^j_{j1 j2, m' m}
     for j1 >= j2, j >= j1 (the LAMMPS order of the components), minus B_zero with bzeroflag;
   * dB/dr_nb uses that B is a symmetric triple product: the derivative through U^j1 is
     (j + 1) / (j1 + 1) Re sum conj(dU^j1) Z^j1_{j j2} (1 with bnormflag), likewise for U^j2.

   Explicit multi-element SNAP (chemflag 1, Cusentino et al., J. Phys. Chem. A 124, 5456 (2020)), in
   LAMMPS' conventions: with nelem elements the density is split by the neighbours' element,
   U_tot,e = [e is the centre's element, or wselfallflag] + sum over neighbours of element e; Z is built
   for every ordered pair of elements, Z_{e1 e2} from U_tot,e1^j1 and U_tot,e2^j2, and every component
   for every ordered triple, B_{e1 e2 e3} = conj(U_tot,e3^j) . Z_{e1 e2}, component
   ((e1 nelem + e2) nelem + e3) ncomp + k; with bzeroflag, B_zero is subtracted from the triple
   (e_i, e_i, e_i) of the centre's element only (from every triple with wselfallflag). A neighbour of
   element e moves U_tot,e only: dB_{e1 e2 e} through U^j, dB_{e e2 e1} through U^j1 (with
   Z_{e1 e2}^{j j2 j1}) and dB_{e1 e e2} through U^j2 (with Z_{e2 e1}^{j j1 j2}). One element is the
   ordinary (chemflag 0) SNAP.

   Only half of each U and Z matrix is summed: the other half follows from
   U^j_{j-m', j-m} = (-1)^(m + m') conj(U^j_{m' m}), which holds for any real-weighted sum of
   Wigner matrices. */

#ifndef FITSNAP_UQ_SNAP_BISPECTRUM_H
#define FITSNAP_UQ_SNAP_BISPECTRUM_H

#include <utility>
#include <vector>

namespace fitsnap_uq {

class SnapBispectrum {
 public:
  // nelem > 1: explicit multi-element SNAP (chemflag 1) with nelem elements, wselfall its
  // wselfallflag; nelem = 1: ordinary SNAP (wselfall has no effect)
  SnapBispectrum(int twojmax, double rfac0, double rmin0, bool switchflag, bool bzeroflag,
                 bool bnormflag, int nelem = 1, bool wselfall = false);

  // components per atom: nelem^3 x those of one element
  int ncoeff() const { return nelem * nelem * nelem * (int) btriples.size(); }

  // the central atom's neighbours (position relative to it, A; pair cutoff, A; weight w_nb;
  // element 0 .. nelem - 1)
  void clear_neighbors();
  void add_neighbor(double x, double y, double z, double rcut, double weight, int element = 0);
  int nneighbors() const { return (int) nb_x.size(); }

  // B of the central atom of element ielem, (ncoeff); call after the neighbours are added
  void compute(double *b, int ielem = 0);
  // dB / d r_nb of neighbour nb, (3, ncoeff) row-major [x | y | z]; after compute()
  void gradient(int nb, double *db);

 private:
  int twojmax;
  double rfac0, rmin0;
  bool switchflag, bzeroflag, bnormflag;
  int nelem;
  bool wselfall;

  // U^j stored as full matrices, element (mb, ma) of j at uoffset[j] + mb * (j + 1) + ma
  std::vector<int> uoffset;
  int usize;
  // per j, the half of the matrix that is summed (indices into U^j) and the weight of each
  std::vector<std::vector<int>> half_index;
  std::vector<std::vector<double>> half_weight;

  struct ZTriple {
    int j1, j2, j;
    int offset;    // into one element pair's Z, half_index[j].size() entries
  };
  std::vector<ZTriple> ztriples;
  // for each Z element: the terms cg * U^j1[i1] * U^j2[i2] (CSR over the elements)
  std::vector<int> zterm_start, zterm_i1, zterm_i2;
  std::vector<double> zterm_cg;
  int zsize;    // Z entries of one element pair (zw_r/zw_i hold nelem^2 of them)

  struct BTerm {
    int j;          // the U (or dU) that is contracted
    int zoffset;    // with this Z (weights folded in)
    double factor;
  };
  struct BTriple {    // one component B_{j1 j2 j} (of one element triple)
    BTerm value;      // B itself: conj(U^j) . Z_{j1 j2}^j
    BTerm grad[3];    // dB: the three terms of the product rule
  };
  std::vector<BTriple> btriples;
  std::vector<double> bzero;

  // the gradient terms for a neighbour of element e, grouped by the U^j they contract: one row per
  // distinct Z (element pair and j1 j2 j; several terms, e.g. both U^j1 and U^j2 of B_{j1 j1 j},
  // contract the same Z), each feeding (component, factor)s
  struct GradRow {
    int zoffset;    // into zw_r/zw_i (element pair included)
    std::vector<std::pair<int, double>> targets;
  };
  std::vector<std::vector<std::vector<GradRow>>> grad_rows;    // [e][j]
  std::vector<std::vector<int>> grad_offset;                   // [e][j], into gm_r/gm_i
  std::vector<double> gm_r, gm_i;                              // per atom: Zw, contiguous rows
  std::vector<double> half_r, half_i;                          // scratch: dU^j (half) for x, y, z

  std::vector<std::vector<double>> rootpq;

  // per neighbour
  std::vector<double> nb_x, nb_y, nb_z, nb_rcut, nb_w;
  std::vector<int> nb_elem;
  std::vector<double> nb_ur, nb_ui;    // each neighbour's own U (usize each), for the gradients
  // the atom's density per element (nelem x usize) and its weighted Z per element pair
  // (nelem^2 x zsize; weights of the half sums folded in)
  std::vector<double> utot_r, utot_i, zw_r, zw_i;
  // scratch for gradients
  std::vector<double> du_r[3], du_i[3];

  void cayley_klein(double x, double y, double z, double rcut, double &r, double &z0, double &ar,
                    double &ai, double &br, double &bi) const;
  void wigner(double ar, double ai, double br, double bi, double *ur, double *ui) const;
  void fill_symmetric(int j, double *ur, double *ui) const;
  double switching(double r, double rcut, double &dfc) const;
  int ztriple_offset(int j1, int j2, int j);
};

}    // namespace fitsnap_uq

#endif
