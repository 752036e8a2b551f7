import SpindleCLI

#if canImport(Glibc)
  import Glibc
#endif

exit(await Spindle.main(CommandLine.arguments))
