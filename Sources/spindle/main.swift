import SpindleCLI

#if canImport(Glibc)
  import Glibc
#endif

Spindle.recordStartupSignalState()
exit(await Spindle.main(CommandLine.arguments))
