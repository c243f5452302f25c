"""sgdtraj: the plumbing below the project's packages; it knows nothing of what they compute or write.

=========================  ==========================================================================
module                     contents
=========================  ==========================================================================
:mod:`sgdtraj.files`       atomic writes (temp file + rename), JSON and CSV
:mod:`sgdtraj.provenance`  one provenance schema: time, command, seed, config, versions, git
:mod:`sgdtraj.outputs`     output directories: kinds registered by their owners, ownership marker, lock, claim
:mod:`sgdtraj.arguments`      argument checks naming the parameter and the allowed range (error class a parameter)
:mod:`sgdtraj.workers`     worker processes: start method, exit with the parent
:mod:`sgdtraj.timing`      :class:`~sgdtraj.timing.Stopwatch`: wall and CPU seconds per named phase
:mod:`sgdtraj.commands`         :func:`~sgdtraj.commands.run_command`: one error / exit-code / SIGTERM rule
=========================  ==========================================================================
"""
