import Testing

@testable import SpindleCLI

/// The getopt_long work-alike: results, optind, argument permutation and
/// glibc's messages.
@Suite struct GetoptTests {
  /// Collects the results and the messages of a parse.
  private final class Messages: @unchecked Sendable {
    var text = ""
  }

  private func parse(
    _ arguments: [String], _ options: String, long: [Getopt.LongOption] = [],
    requireOrder: Bool = false
  ) -> (results: [String], operands: [String], messages: String, parser: Getopt) {
    let messages = Messages()
    var parser = Getopt(
      arguments: arguments, options: options, longOptions: long,
      environment: requireOrder ? ["POSIXLY_CORRECT": "1"] : [:]
    ) { messages.text += $0 }
    var results: [String] = []
    while let result = parser.next() {
      switch result {
      case .option(let key): results.append(parser.optarg.map { "\(key)=\($0)" } ?? key)
      case .invalid: results.append("?")
      case .missingArgument: results.append(":")
      }
    }
    return (results, Array(parser.operands), messages.text, parser)
  }

  @Test func clusteredAndAttachedArguments() {
    let parsed = parse(["read", "-vqP0x41", "-l", "5", "0", "-s3", "10"], "bCl:pP:qs:v")
    #expect(parsed.results == ["v", "q", "P=0x41", "l=5", "s=3"])
    #expect(parsed.operands == ["0", "10"])
    #expect(parsed.messages.isEmpty)
  }

  @Test func operandsArePermutedBehindOptions() {
    let parsed = parse(["read", "0", "1", "-v"], "v")
    #expect(parsed.results == ["v"])
    #expect(parsed.operands == ["0", "1"])
    #expect(parsed.parser.arguments == ["read", "-v", "0", "1"])
  }

  @Test func negativeNumbersAreOptions() {
    let parsed = parse(["read", "0", "-1"], "v")
    #expect(parsed.results == ["?"])
    #expect(parsed.messages == "read: invalid option -- '1'\n")
  }

  @Test func doubleDashEndsOptions() {
    let parsed = parse(["read", "-v", "--", "-1", "1"], "v")
    #expect(parsed.results == ["v"])
    #expect(parsed.operands == ["-1", "1"])
  }

  @Test func singleDashIsAnOperand() {
    let parsed = parse(["x", "-", "-v"], "v")
    #expect(parsed.results == ["v"])
    #expect(parsed.operands == ["-"])
  }

  @Test func missingArgumentMessagesAndSilentMode() {
    let loud = parse(["qemu-io", "-t"], "t:")
    #expect(loud.results == ["?"])
    #expect(loud.messages == "qemu-io: option requires an argument -- 't'\n")
    let silent = parse(["bench", "-c"], ":c:")
    #expect(silent.results == [":"])
    #expect(silent.messages.isEmpty)
  }

  /// qemu-img prints `argv[optind - 1]`, which depends on exactly when glibc
  /// advances optind inside a cluster.
  @Test func optindInsideClusters() {
    var parser = Getopt(arguments: ["bench", "-c", "1", "-Zw", "f"], options: ":c:w") { _ in }
    _ = parser.next()
    #expect(parser.next() == .invalid)
    #expect(parser.arguments[parser.optind - 1] == "1")
    parser = Getopt(arguments: ["bench", "-wZ", "f"], options: ":c:w") { _ in }
    _ = parser.next()
    #expect(parser.next() == .invalid)
    #expect(parser.arguments[parser.optind - 1] == "-wZ")
    let parsed = parse(["bench", "f", "-wc"], ":c:w")
    #expect(parsed.results == ["w", ":"])
    #expect(parsed.parser.arguments[parsed.parser.optind - 1] == "-wc")
  }

  private let benchLong: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("flush-interval", .required), .init("image-opts"),
    .init("pattern", .required), .init("no-drain"), .init("force-share", key: "U"),
  ]

  @Test func longOptionsExactAbbreviatedAndWithValues() {
    let parsed = parse(
      ["bench", "--pattern=7", "--flush", "64", "--image", "--fo", "file"], "hU", long: benchLong)
    #expect(parsed.results == ["pattern=7", "flush-interval=64", "image-opts", "U"])
    #expect(parsed.operands == ["file"])
  }

  @Test func longOptionErrors() {
    let ambiguous = parse(["prog", "--f", "3"], "", long: benchLong)
    #expect(ambiguous.results == ["?"])
    #expect(
      ambiguous.messages
        == "prog: option '--f' is ambiguous; possibilities: '--flush-interval' '--force-share'\n")
    let unknown = parse(["prog", "--bogus=3"], "", long: benchLong)
    #expect(unknown.messages == "prog: unrecognized option '--bogus=3'\n")
    let noValue = parse(["prog", "--image-opts=x"], "", long: benchLong)
    #expect(noValue.messages == "prog: option '--image-opts' doesn't allow an argument\n")
    let missing = parse(["prog", "--pattern"], "", long: benchLong)
    #expect(missing.results == ["?"])
    #expect(missing.messages == "prog: option '--pattern' requires an argument\n")
    let silentMissing = parse(["prog", "--pattern"], ":", long: benchLong)
    #expect(silentMissing.results == [":"])
  }

  @Test func requireOrderStopsAtTheFirstOperand() {
    let plus = parse(["qemu-img", "-T", "x", "bench", "-c", "1"], "+:hVT:")
    #expect(plus.results == ["T=x"])
    #expect(plus.operands == ["bench", "-c", "1"])
    let posix = parse(["read", "0", "-v", "1"], "v", requireOrder: true)
    #expect(posix.results.isEmpty)
    #expect(posix.operands == ["0", "-v", "1"])
  }
}
