/* fitsnap-uq: SNAP bispectrum and its neighbour derivatives in one pass (see snap_bispectrum.h).
   GPL-2.0-only, like fitsnap-uq and LAMMPS. */

#include "snap_bispectrum.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>
#include <tuple>

namespace fitsnap_uq {

namespace {

double factorial(int n)
{
  if (n < 0) throw std::logic_error("factorial of a negative number");
  double f = 1.0;
  for (int i = 2; i <= n; i++) f *= i;
  return f;
}

/* Clebsch-Gordan coefficient <j1/2 m1/2, j2/2 m2/2 | j/2 m/2> (Racah's formula, Condon-Shortley
   phases); all arguments doubled, so integers. */
double clebsch_gordan(int j1, int m1, int j2, int m2, int j, int m)
{
  if (m1 + m2 != m) return 0.0;
  if (j < std::abs(j1 - j2) || j > j1 + j2 || (j1 + j2 + j) % 2) return 0.0;
  if (std::abs(m1) > j1 || std::abs(m2) > j2 || std::abs(m) > j) return 0.0;
  const int a = (j1 + j2 - j) / 2, b = (j1 - m1) / 2, c = (j2 + m2) / 2;
  const int d = (j - j2 + m1) / 2, e = (j - j1 - m2) / 2;
  double sum = 0.0;
  for (int k = std::max({0, -d, -e}); k <= std::min({a, b, c}); k++) {
    const double term = 1.0 /
        (factorial(k) * factorial(a - k) * factorial(b - k) * factorial(c - k) * factorial(d + k) *
         factorial(e + k));
    sum += (k % 2) ? -term : term;
  }
  const double norm = (j + 1) * factorial((j + j1 - j2) / 2) * factorial((j - j1 + j2) / 2) *
      factorial((j1 + j2 - j) / 2) / factorial((j1 + j2 + j) / 2 + 1);
  const double proj = factorial((j + m) / 2) * factorial((j - m) / 2) * factorial((j1 - m1) / 2) *
      factorial((j1 + m1) / 2) * factorial((j2 - m2) / 2) * factorial((j2 + m2) / 2);
  return std::sqrt(norm * proj) * sum;
}

}    // namespace

/* ---------------------------------------------------------------------- */

SnapBispectrum::SnapBispectrum(int twojmax_in, double rfac0_in, double rmin0_in, bool switch_in,
                               bool bzero_in, bool bnorm_in, int nelem_in, bool wselfall_in) :
    twojmax(twojmax_in), rfac0(rfac0_in), rmin0(rmin0_in), switchflag(switch_in),
    bzeroflag(bzero_in), bnormflag(bnorm_in), nelem(nelem_in), wselfall(wselfall_in)
{
  if (twojmax < 0) throw std::invalid_argument("twojmax must be >= 0");
  if (nelem < 1) throw std::invalid_argument("the number of elements must be >= 1");

  uoffset.resize(twojmax + 1);
  usize = 0;
  for (int j = 0; j <= twojmax; j++) {
    uoffset[j] = usize;
    usize += (j + 1) * (j + 1);
  }
  half_index.resize(twojmax + 1);
  half_weight.resize(twojmax + 1);
  for (int j = 0; j <= twojmax; j++) {
    for (int mb = 0; 2 * mb <= j; mb++)
      for (int ma = 0; ma <= j; ma++) {
        double w = 2.0;
        if (2 * mb == j) {
          if (ma > mb) continue;
          if (ma == mb) w = 1.0;
        }
        half_index[j].push_back(mb * (j + 1) + ma);
        half_weight[j].push_back(w);
      }
  }

  rootpq.assign(twojmax + 2, std::vector<double>(twojmax + 2, 0.0));
  for (int p = 1; p <= twojmax + 1; p++)
    for (int q = 1; q <= twojmax + 1; q++) rootpq[p][q] = std::sqrt((double) p / q);

  // the bispectrum components, in the order of LAMMPS' compute sna/atom, and the Z they need

  zsize = 0;
  zterm_start.push_back(0);
  for (int j1 = 0; j1 <= twojmax; j1++)
    for (int j2 = 0; j2 <= j1; j2++)
      for (int j = j1 - j2; j <= std::min(twojmax, j1 + j2); j += 2) {
        if (j < j1) continue;
        BTriple t;
        t.value = {j, ztriple_offset(j1, j2, j), 1.0};
        t.grad[0] = {j, t.value.zoffset, 1.0};
        t.grad[1] = {j1, ztriple_offset(j, j2, j1), bnormflag ? 1.0 : (j + 1.0) / (j1 + 1.0)};
        t.grad[2] = {j2, ztriple_offset(j, j1, j2), bnormflag ? 1.0 : (j + 1.0) / (j2 + 1.0)};
        btriples.push_back(t);
        bzero.push_back(bnormflag ? 1.0 : j + 1.0);    // B of an isolated atom
      }

  // the gradient rows for a neighbour of element e: component k of B_{e1 e2 e3} is
  // ((e1 nelem + e2) nelem + e3) nb + k; Z of the element pair (e1, e2) starts at (e1 nelem + e2) zsize

  const int nb = (int) btriples.size();
  auto triple = [&](int e1, int e2, int e3) { return ((e1 * nelem + e2) * nelem + e3) * nb; };
  auto pair = [&](int e1, int e2) { return (e1 * nelem + e2) * zsize; };
  grad_rows.assign(nelem, std::vector<std::vector<GradRow>>(twojmax + 1));
  for (int e = 0; e < nelem; e++) {
    std::vector<std::map<int, int>> row_of(twojmax + 1);    // per j: Z offset -> its row
    auto add = [&](const BTerm &term, int zpair, int component) {
      auto &rows = grad_rows[e][term.j];
      const int zoffset = zpair + term.zoffset;
      auto found = row_of[term.j].find(zoffset);
      if (found == row_of[term.j].end()) {
        found = row_of[term.j].emplace(zoffset, (int) rows.size()).first;
        rows.push_back(GradRow{zoffset, {}});
      }
      auto &targets = rows[found->second].targets;
      auto target = std::find_if(targets.begin(), targets.end(),
                                 [&](const std::pair<int, double> &t) { return t.first == component; });
      if (target == targets.end()) targets.emplace_back(component, term.factor);
      else target->second += term.factor;
    };
    for (int k = 0; k < nb; k++) {
      const BTriple &t = btriples[k];
      for (int e1 = 0; e1 < nelem; e1++)
        for (int e2 = 0; e2 < nelem; e2++) {
          add(t.grad[0], pair(e1, e2), triple(e1, e2, e) + k);    // through U^j of B_{e1 e2 e}
          add(t.grad[1], pair(e1, e2), triple(e, e2, e1) + k);    // through U^j1 of B_{e e2 e1}
          add(t.grad[2], pair(e2, e1), triple(e1, e, e2) + k);    // through U^j2 of B_{e1 e e2}
        }
    }
  }
  grad_offset.assign(nelem, std::vector<int>(twojmax + 1, 0));
  int gsize = 0, hmax = 0;
  for (int e = 0; e < nelem; e++)
    for (int j = 0; j <= twojmax; j++) {
      grad_offset[e][j] = gsize;
      gsize += (int) (grad_rows[e][j].size() * half_index[j].size());
      hmax = std::max(hmax, (int) half_index[j].size());
    }
  gm_r.assign(gsize, 0.0);
  gm_i.assign(gsize, 0.0);
  half_r.assign(3 * hmax, 0.0);
  half_i.assign(3 * hmax, 0.0);

  utot_r.assign((size_t) nelem * usize, 0.0);
  utot_i.assign((size_t) nelem * usize, 0.0);
  zw_r.assign((size_t) nelem * nelem * zsize, 0.0);
  zw_i.assign((size_t) nelem * nelem * zsize, 0.0);
  for (int c = 0; c < 3; c++) {
    du_r[c].assign(usize, 0.0);
    du_i[c].assign(usize, 0.0);
  }
}

/* ----------------------------------------------------------------------
   the offset of Z^j_{j1 j2} (half matrix), building its CG terms on first use
------------------------------------------------------------------------- */

int SnapBispectrum::ztriple_offset(int j1, int j2, int j)
{
  for (const auto &z : ztriples)
    if (z.j1 == j1 && z.j2 == j2 && z.j == j) return z.offset;
  ZTriple z{j1, j2, j, zsize};
  const int shift = (j1 + j2 - j) / 2;
  for (int idx : half_index[j]) {
    const int mb = idx / (j + 1), ma = idx % (j + 1);
    for (int mb1 = 0; mb1 <= j1; mb1++) {
      const int mb2 = mb - mb1 + shift;
      if (mb2 < 0 || mb2 > j2) continue;
      const double cgb = clebsch_gordan(j1, 2 * mb1 - j1, j2, 2 * mb2 - j2, j, 2 * mb - j);
      if (cgb == 0.0) continue;
      for (int ma1 = 0; ma1 <= j1; ma1++) {
        const int ma2 = ma - ma1 + shift;
        if (ma2 < 0 || ma2 > j2) continue;
        const double cga = clebsch_gordan(j1, 2 * ma1 - j1, j2, 2 * ma2 - j2, j, 2 * ma - j);
        if (cga == 0.0) continue;
        zterm_i1.push_back(uoffset[j1] + mb1 * (j1 + 1) + ma1);
        zterm_i2.push_back(uoffset[j2] + mb2 * (j2 + 1) + ma2);
        zterm_cg.push_back(cga * cgb / (bnormflag ? j + 1.0 : 1.0));
      }
    }
    zterm_start.push_back((int) zterm_cg.size());
  }
  zsize += (int) half_index[j].size();
  ztriples.push_back(z);
  return z.offset;
}

/* ---------------------------------------------------------------------- */

void SnapBispectrum::clear_neighbors()
{
  nb_x.clear();
  nb_y.clear();
  nb_z.clear();
  nb_rcut.clear();
  nb_w.clear();
  nb_elem.clear();
}

void SnapBispectrum::add_neighbor(double x, double y, double z, double rcut, double weight,
                                  int element)
{
  if (element < 0 || element >= nelem) throw std::out_of_range("neighbour element out of range");
  nb_x.push_back(x);
  nb_y.push_back(y);
  nb_z.push_back(z);
  nb_rcut.push_back(rcut);
  nb_w.push_back(weight);
  nb_elem.push_back(element);
}

/* ---------------------------------------------------------------------- */

double SnapBispectrum::switching(double r, double rcut, double &dfc) const
{
  dfc = 0.0;
  if (!switchflag) return 1.0;
  if (r <= rmin0) return 1.0;
  if (r > rcut) return 0.0;
  const double scale = M_PI / (rcut - rmin0);
  const double arg = (r - rmin0) * scale;
  dfc = -0.5 * std::sin(arg) * scale;
  return 0.5 * (std::cos(arg) + 1.0);
}

void SnapBispectrum::cayley_klein(double x, double y, double z, double rcut, double &r, double &z0,
                                  double &ar, double &ai, double &br, double &bi) const
{
  r = std::sqrt(x * x + y * y + z * z);
  const double theta0 = (r - rmin0) * rfac0 * M_PI / (rcut - rmin0);
  z0 = r / std::tan(theta0);
  const double r0inv = 1.0 / std::sqrt(r * r + z0 * z0);
  ar = r0inv * z0;
  ai = -r0inv * z;
  br = r0inv * y;
  bi = -r0inv * x;
}

/* rows 2 mb > j of U^j from rows 2 mb < j: U_{mb, ma} = (-1)^(ma + mb) conj(U_{j-mb, j-ma}) */
void SnapBispectrum::fill_symmetric(int j, double *ur, double *ui) const
{
  const int n = j + 1;
  double *r = ur + uoffset[j], *im = ui + uoffset[j];
  for (int mb = j / 2 + 1; mb <= j; mb++)
    for (int ma = 0; ma <= j; ma++) {
      const int src = (j - mb) * n + (j - ma);
      const double sign = ((ma + mb) % 2) ? -1.0 : 1.0;
      r[mb * n + ma] = sign * r[src];
      im[mb * n + ma] = -sign * im[src];
    }
}

/* Wigner matrices U^0 .. U^twojmax of the rotation with Cayley-Klein parameters (a, b) */
void SnapBispectrum::wigner(double ar, double ai, double br, double bi, double *ur, double *ui) const
{
  ur[0] = 1.0;
  ui[0] = 0.0;
  for (int j = 1; j <= twojmax; j++) {
    const int n = j + 1, np = j;
    double *r = ur + uoffset[j], *im = ui + uoffset[j];
    const double *pr = ur + uoffset[j - 1], *pi = ui + uoffset[j - 1];
    for (int mb = 0; 2 * mb <= j; mb++) {
      for (int ma = 0; ma <= j; ma++) r[mb * n + ma] = im[mb * n + ma] = 0.0;
      for (int ma = 0; ma < j; ma++) {
        const double vr = pr[mb * np + ma], vi = pi[mb * np + ma];
        const double ra = rootpq[j - ma][j - mb], rb = rootpq[ma + 1][j - mb];
        // += ra * conj(a) * v ;  next = -rb * conj(b) * v
        r[mb * n + ma] += ra * (ar * vr + ai * vi);
        im[mb * n + ma] += ra * (ar * vi - ai * vr);
        r[mb * n + ma + 1] -= rb * (br * vr + bi * vi);
        im[mb * n + ma + 1] -= rb * (br * vi - bi * vr);
      }
    }
    fill_symmetric(j, ur, ui);
  }
}

/* ---------------------------------------------------------------------- */

void SnapBispectrum::compute(double *b, int ielem)
{
  if (ielem < 0 || ielem >= nelem) throw std::out_of_range("element of the centre out of range");
  const int nnb = nneighbors();
  nb_ur.resize((size_t) nnb * usize);
  nb_ui.resize((size_t) nnb * usize);

  std::fill(utot_r.begin(), utot_r.end(), 0.0);
  std::fill(utot_i.begin(), utot_i.end(), 0.0);
  for (int e = 0; e < nelem; e++) {    // the centre, in its element's density (or in all)
    if (e != ielem && !wselfall) continue;
    double *ur = utot_r.data() + (size_t) e * usize;
    for (int j = 0; j <= twojmax; j++)
      for (int ma = 0; ma <= j; ma++) ur[uoffset[j] + ma * (j + 1) + ma] = 1.0;
  }

  for (int k = 0; k < nnb; k++) {
    double r, z0, ar, ai, br, bi, dfc;
    cayley_klein(nb_x[k], nb_y[k], nb_z[k], nb_rcut[k], r, z0, ar, ai, br, bi);
    double *ur = &nb_ur[(size_t) k * usize], *ui = &nb_ui[(size_t) k * usize];
    wigner(ar, ai, br, bi, ur, ui);
    const double w = nb_w[k] * switching(r, nb_rcut[k], dfc);
    double *tr = utot_r.data() + (size_t) nb_elem[k] * usize;
    double *ti = utot_i.data() + (size_t) nb_elem[k] * usize;
    for (int i = 0; i < usize; i++) {
      tr[i] += w * ur[i];
      ti[i] += w * ui[i];
    }
  }

  // Z (half matrices) of every element pair, with the half-sum weights folded in
  for (int e1 = 0; e1 < nelem; e1++)
    for (int e2 = 0; e2 < nelem; e2++) {
      const double *u1r = utot_r.data() + (size_t) e1 * usize, *u1i = utot_i.data() + (size_t) e1 * usize;
      const double *u2r = utot_r.data() + (size_t) e2 * usize, *u2i = utot_i.data() + (size_t) e2 * usize;
      double *zr = zw_r.data() + (size_t) (e1 * nelem + e2) * zsize;
      double *zi = zw_i.data() + (size_t) (e1 * nelem + e2) * zsize;
      for (const auto &z : ztriples) {
        const auto &weight = half_weight[z.j];
        for (size_t e = 0; e < weight.size(); e++) {
          const int el = z.offset + (int) e;
          double sr = 0.0, si = 0.0;
          for (int t = zterm_start[el]; t < zterm_start[el + 1]; t++) {
            const double ar = u1r[zterm_i1[t]], ai = u1i[zterm_i1[t]];
            const double br = u2r[zterm_i2[t]], bi = u2i[zterm_i2[t]];
            sr += zterm_cg[t] * (ar * br - ai * bi);
            si += zterm_cg[t] * (ar * bi + ai * br);
          }
          zr[el] = weight[e] * sr;
          zi[el] = weight[e] * si;
        }
      }
    }

  // the gradient rows of a neighbour of each element: Zw, contiguous per U^j
  for (int e = 0; e < nelem; e++)
    for (int j = 0; j <= twojmax; j++) {
      const int hs = (int) half_index[j].size();
      double *gr = gm_r.data() + grad_offset[e][j], *gi = gm_i.data() + grad_offset[e][j];
      for (const GradRow &row : grad_rows[e][j]) {
        for (int h = 0; h < hs; h++) {
          gr[h] = zw_r[row.zoffset + h];
          gi[h] = zw_i[row.zoffset + h];
        }
        gr += hs;
        gi += hs;
      }
    }

  const int nb = (int) btriples.size();
  for (int e1 = 0; e1 < nelem; e1++)
    for (int e2 = 0; e2 < nelem; e2++) {
      const double *zr = zw_r.data() + (size_t) (e1 * nelem + e2) * zsize;
      const double *zi = zw_i.data() + (size_t) (e1 * nelem + e2) * zsize;
      for (int e3 = 0; e3 < nelem; e3++) {
        const int triple = (e1 * nelem + e2) * nelem + e3;
        const bool shifted = bzeroflag && (wselfall || (e1 == ielem && e2 == ielem && e3 == ielem));
        const double *u3r = utot_r.data() + (size_t) e3 * usize, *u3i = utot_i.data() + (size_t) e3 * usize;
        for (int k = 0; k < nb; k++) {
          const BTerm &t = btriples[k].value;
          const auto &idx = half_index[t.j];
          const double *ur = u3r + uoffset[t.j], *ui = u3i + uoffset[t.j];
          double s = 0.0;
          for (size_t h = 0; h < idx.size(); h++)
            s += ur[idx[h]] * zr[t.zoffset + h] + ui[idx[h]] * zi[t.zoffset + h];
          b[triple * nb + k] = shifted ? s - bzero[k] : s;
        }
      }
    }
}

/* ---------------------------------------------------------------------- */

void SnapBispectrum::gradient(int k, double *db)
{
  const int nc = ncoeff();
  double r, z0, ar, ai, br, bi, dfc;
  const double x = nb_x[k], y = nb_y[k], z = nb_z[k], rcut = nb_rcut[k];
  cayley_klein(x, y, z, rcut, r, z0, ar, ai, br, bi);
  const double fc = switching(r, rcut, dfc);
  const double *ur = &nb_ur[(size_t) k * usize], *ui = &nb_ui[(size_t) k * usize];

  // derivatives of the Cayley-Klein parameters with respect to the neighbour's x, y, z
  const double unit[3] = {x / r, y / r, z / r};
  const double scale = rfac0 * M_PI / (rcut - rmin0);
  const double theta0 = (r - rmin0) * scale;
  const double sn = std::sin(theta0);
  const double dz0dr = z0 / r - r * scale / (sn * sn);
  const double r0inv = 1.0 / std::sqrt(r * r + z0 * z0);
  double dar[3], dai[3], dbr[3], dbi[3];
  for (int c = 0; c < 3; c++) {
    const double dr0inv = -r0inv * r0inv * r0inv * (r + z0 * dz0dr) * unit[c];
    dar[c] = dr0inv * z0 + r0inv * dz0dr * unit[c];
    dai[c] = -dr0inv * z - (c == 2 ? r0inv : 0.0);
    dbr[c] = dr0inv * y + (c == 1 ? r0inv : 0.0);
    dbi[c] = -dr0inv * x - (c == 0 ? r0inv : 0.0);
  }

  // dU^j by the derivative of the recursion, x, y, z together. Only rows 2 mb <= j are summed;
  // the recursion for j + 1 also needs row (j + 1) / 2 of an odd j, filled by symmetry.
  double *dr[3], *di[3];
  for (int c = 0; c < 3; c++) {
    dr[c] = du_r[c].data();
    di[c] = du_i[c].data();
    dr[c][0] = di[c][0] = 0.0;
  }
  for (int j = 1; j <= twojmax; j++) {
    const int n = j + 1, np = j, uj = uoffset[j], up = uoffset[j - 1];
    const double *pr = ur + up, *pi = ui + up;
    for (int mb = 0; 2 * mb <= j; mb++) {
      for (int c = 0; c < 3; c++)
        for (int ma = 0; ma <= j; ma++) dr[c][uj + mb * n + ma] = di[c][uj + mb * n + ma] = 0.0;
      for (int ma = 0; ma < j; ma++) {
        const int src = mb * np + ma, dst = uj + mb * n + ma;
        const double vr = pr[src], vi = pi[src];
        const double ra = rootpq[j - ma][j - mb], rb = rootpq[ma + 1][j - mb];
        for (int c = 0; c < 3; c++) {
          const double dvr = dr[c][up + src], dvi = di[c][up + src];
          dr[c][dst] += ra * (dar[c] * vr + dai[c] * vi + ar * dvr + ai * dvi);
          di[c][dst] += ra * (dar[c] * vi - dai[c] * vr + ar * dvi - ai * dvr);
          dr[c][dst + 1] -= rb * (dbr[c] * vr + dbi[c] * vi + br * dvr + bi * dvi);
          di[c][dst + 1] -= rb * (dbr[c] * vi - dbi[c] * vr + br * dvi - bi * dvr);
        }
      }
    }
    if (j % 2 == 1 && j < twojmax) {
      const int mb = (j + 1) / 2;
      for (int ma = 0; ma <= j; ma++) {
        const int src = uj + (j - mb) * n + (j - ma), dst = uj + mb * n + ma;
        const double sign = ((ma + mb) % 2) ? -1.0 : 1.0;
        for (int c = 0; c < 3; c++) {
          dr[c][dst] = sign * dr[c][src];
          di[c][dst] = -sign * di[c][src];
        }
      }
    }
  }
  const double w = nb_w[k];
  const int e = nb_elem[k];    // the neighbour moves the density of its element only

  for (int i = 0; i < 3 * nc; i++) db[i] = 0.0;
  for (int j = 0; j <= twojmax; j++) {    // (U^0 is constant, but its weight fc(r) is not)
    const auto &idx = half_index[j];
    const int hs = (int) idx.size();
    // d(w fc U)/dr = w (dfc unit U + fc dU), on the summed half
    const double *u0r = ur + uoffset[j], *u0i = ui + uoffset[j];
    for (int c = 0; c < 3; c++) {
      const double *qr = dr[c] + uoffset[j], *qi = di[c] + uoffset[j];
      double *hr = half_r.data() + c * hs, *hi = half_i.data() + c * hs;
      const double a0 = w * dfc * unit[c], a1 = w * fc;
      for (int h = 0; h < hs; h++) {
        hr[h] = a0 * u0r[idx[h]] + a1 * qr[idx[h]];
        hi[h] = a0 * u0i[idx[h]] + a1 * qi[idx[h]];
      }
    }
    const double *gr = gm_r.data() + grad_offset[e][j], *gi = gm_i.data() + grad_offset[e][j];
    const double *hr = half_r.data(), *hi = half_i.data();
    for (const GradRow &row : grad_rows[e][j]) {
      double sx = 0.0, sy = 0.0, sz = 0.0;
      for (int h = 0; h < hs; h++) {
        sx += gr[h] * hr[h] + gi[h] * hi[h];
        sy += gr[h] * hr[hs + h] + gi[h] * hi[hs + h];
        sz += gr[h] * hr[2 * hs + h] + gi[h] * hi[2 * hs + h];
      }
      for (const auto &[comp, factor] : row.targets) {
        db[comp] += factor * sx;
        db[nc + comp] += factor * sy;
        db[2 * nc + comp] += factor * sz;
      }
      gr += hs;
      gi += hs;
    }
  }
}

}    // namespace fitsnap_uq
