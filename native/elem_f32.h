/* elem_f32.h: float inputs for the SIMD kernel body (kernels_simd.h), over any vec_*.h header.

   What it does: names what the body does with an input element (a query, key or value entry):
   for float, one dim per step of a dot product (KSTEP 1), each a vector FMA, and p taken by
   P·V as it is. Every operation here is one of the vec header's, so the float32 kernels are
   exactly those of the body over that header.
   What it does not do: compile on its own (kernels_avx512.c and kernels_avx2.c include it after
   their vec header, inside their target pragma, then the body).

   Legend: VW lanes a vector; a run is the VW·KSTEP elements one vector of lanes holds. */
#ifndef REFATTN_ELEM_F32_H
#define REFATTN_ELEM_F32_H

typedef float elem;
typedef elem pelem;              /* packed keys: as they are */
#define KSTEP 1                  /* dims per step of a dot product, in each lane */
#define ELEM_OPS refattn_ops_f32 /* the table type of these kernels */

/* A run of elements (count of them, the rest 0 and not read) */
INLINE vec vload_dims(const elem *p) { return vload(p); }
INLINE vec vload_dims_part(const elem *p, int64_t count) { return vload_part(vlanes(count), p); }
/* A run of packed elements, and its store */
INLINE vec vload_packed(const pelem *p) { return vload(p); }
INLINE void vstore_packed(pelem *p, vec x) { vstore(p, x); }
/* One step of a query row in every lane: p[0] (a step has one element: never part of one) */
INLINE vec vbroadcast_dims(const elem *p) { return vbroadcast(p); }
INLINE vec vbroadcast_dims_part(const elem *p, int64_t count) {
    (void)count;
    return vbroadcast(p);
}
/* acc + a·b, lane by lane */
INLINE vec vdot(vec a, vec b, vec acc) { return vfmadd(a, b, acc); }
/* VW value elements as floats, the lanes of k (0 elsewhere) */
INLINE vec vload_values(vmask k, const elem *p) { return vload_part(k, p); }
/* p as P·V takes it */
INLINE vec vround_p(vec p) { return p; }

#endif
