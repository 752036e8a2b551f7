import BlockCore

/// qemu-img's `cvtnum`: a size between 0 and `Int64.max`, with its error
/// messages (`Invalid image size specified. ...`); nil after reporting.
@BlockActor
func parseImageNumber(_ text: String, name: String, reporter: Reporter) -> Int64? {
  let parsed = parseQEMUSize(text)
  if case .success(let value) = parsed, value.hexWithSuffix {
    reporter.warning("Using a multiplier suffix on hex numbers is deprecated: \(text)")
  }
  switch parsed {
  case .success(let value) where value.value <= UInt64(Int64.max):
    return Int64(value.value)
  case .failure(.invalid):
    reporter.error("Invalid \(name) specified. You may use k, M, G, T, P or E suffixes for")
    reporter.error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
  case .success, .failure(.range):
    reporter.error("Invalid \(name) specified. Must be between 0 and \(Int64.max).")
  }
  return nil
}
