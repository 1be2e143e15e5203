/* fitsnap-uq: FITSNAP_UQ_SIMD marks a hot numerical function to be compiled for AVX-512, AVX2+FMA and
   baseline x86-64, the best one chosen at load time (GCC function multi-versioning), so the plugin is
   fast on the machine it runs on without being built with -march=native for the machine it was built
   on. Elsewhere (clang, other CPUs, no ifunc) it is empty. GPL-2.0-only, like fitsnap-uq and LAMMPS. */

#ifndef FITSNAP_UQ_SIMD_CLONES_H
#define FITSNAP_UQ_SIMD_CLONES_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    (__GNUC__ >= 11)
#define FITSNAP_UQ_SIMD __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FITSNAP_UQ_SIMD
#endif

#endif
