"""A software prefetch for numba kernels: ask the CPU to start loading a row before it is read.

Trigger-mode lists read ~100 scattered 512-byte vectors per trigger; the decoder knows the next rows a
few entries before it scores them, so it can start their loads while it is still busy with the current
ones (:mod:`mfli.serve.neighbours`). ``llvm.prefetch`` is a hint: it never faults, and on a CPU
without it it compiles to nothing.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: bytes per cache line assumed when a row spans several
LINE = 64


@intrinsic
def prefetch_row(typingctx, arr, row):
    """Prefetch every cache line of ``arr[row, :]`` (a C-contiguous 2-D array) for reading."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout == "C" and isinstance(row, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        aryty, rowty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        r = context.cast(builder, args[1], rowty, types.intp)
        zero = context.get_constant(types.intp, 0)
        ptr = cgutils.get_item_pointer2(context, builder, data=ary.data, shape=cgutils.unpack_tuple(builder, ary.shape),
                                        strides=cgutils.unpack_tuple(builder, ary.strides), layout=aryty.layout,
                                        inds=[r, zero], wraparound=False)
        base = builder.bitcast(ptr, cgutils.voidptr_t)
        row_bytes = builder.mul(cgutils.unpack_tuple(builder, ary.shape)[1],
                                context.get_constant(types.intp, context.get_abi_sizeof(
                                    context.get_data_type(aryty.dtype))))
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        with cgutils.for_range_slice(builder, context.get_constant(types.intp, 0), row_bytes,
                                     context.get_constant(types.intp, LINE), inc=True) as (off, _):
            builder.call(fn, [builder.gep(base, [off]), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, row), codegen
