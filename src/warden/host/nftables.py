"""nft's own library (libnftables(3)) through ctypes, as `nft -j` uses it: a command costs one
netlink transaction instead of starting a process. Used by the helpers that run inside a
network namespace (warden.net.agent, warden.forensics.poolgate); the daemon never calls it.
"""


class LibNftables:
    """nft's own library (libnftables(3)), as `nft -j` uses it, loaded once: a command costs
    one netlink transaction instead of starting a process (what makes `warden net cut` quick
    on a busy host). The same ctypes calls as Debian's python3-nftables."""

    OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON: JSON output, and JSON input is accepted

    def __init__(self) -> None:
        import ctypes

        lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        for fn in (lib.nft_ctx_buffer_output, lib.nft_ctx_buffer_error):
            fn.argtypes = [ctypes.c_void_p]
            fn.restype = ctypes.c_int
        for fn in (lib.nft_ctx_get_output_buffer, lib.nft_ctx_get_error_buffer):
            fn.argtypes = [ctypes.c_void_p]
            fn.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        if not self.ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_output_set_flags(self.ctx, self.OUTPUT_JSON)
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)

    def run(self, command: str) -> tuple[int, str, str]:
        rc = self.lib.nft_run_cmd_from_buffer(self.ctx, command.encode())
        out = self.lib.nft_ctx_get_output_buffer(self.ctx) or b""
        err = self.lib.nft_ctx_get_error_buffer(self.ctx) or b""
        return rc, out.decode(errors="replace"), err.decode(errors="replace")
