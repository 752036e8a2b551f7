/// Human-readable sizes and rates as qemu-io prints them (its `cvtstr`): the
/// largest binary unit not above the value with three decimals (`1.500 KiB`),
/// `.000` dropped (`1 MiB`), and plain `%f` below one KiB (`136.422242 bytes`,
/// `1 bytes`).
func humanSize(_ value: Double) -> String {
  let units: [(shift: Int, suffix: String)] = [
    (60, " EiB"), (50, " PiB"), (40, " TiB"), (30, " GiB"), (20, " MiB"), (10, " KiB"),
  ]
  var text: String
  var suffix = " bytes"
  if let unit = units.first(where: { value >= Double(Int64(1) << $0.shift) }) {
    suffix = unit.suffix
    text = cFormat("%.3f", value / Double(Int64(1) << unit.shift))
  } else {
    text = cFormat("%f", value)
  }
  // Like strstr + strcpy: everything from the first ".000" is replaced.
  if let range = text.firstRange(of: ".000") {
    text.replaceSubrange(range.lowerBound..., with: suffix)
  } else {
    text += suffix
  }
  return text
}

/// An elapsed time as qemu-io's reports print it (its `timestr`): `SS.ss sec`
/// below one second (`00.00 sec`), else `H:MM:SS.ss`; `verbose` (the `-C`
/// format) always uses `H:MM:SS.ss`.
func elapsedText(seconds: Int, nanoseconds: Int, verbose: Bool) -> String {
  let fraction = Double(nanoseconds) / 1e9
  if verbose || seconds != 0 {
    return cFormat(
      "%u:%02u:%05.2f", UInt32(truncatingIfNeeded: seconds / 3600),
      UInt32(truncatingIfNeeded: seconds % 3600 / 60), Double(seconds % 60) + fraction)
  }
  return cFormat("%05.2f sec", fraction)
}
