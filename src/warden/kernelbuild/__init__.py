"""Building UML kernels from source with warden's patch series (`warden kernel build`). The
patches themselves are the repository's top-level kernel/; finding a built kernel at boot time is
warden.uml.kernel."""
