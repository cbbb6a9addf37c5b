package millpond.flinkpeer;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/** Command-line options of `state` (and of the two child commands it runs). */
final class Args {
    String backend = "hashmap";
    /** Distinct keys, 0..keys-1 (Long keys: 8 bytes big-endian, as millpond-bench's u64 keys). */
    long keys = 1_000_000;
    /** Bytes per value (at least 8: the first 8 are the counter read-modify-write bumps). */
    int valueBytes = 100;
    /** Values: "text" (millpond-bench recovery's text-like values) or "zeros" (its state bench's). */
    String values = "text";
    /** Seconds per measured phase. */
    double seconds = 10;
    /** Zipf exponent for key choice; 0 = uniform. */
    double zipf = 0;
    /** Memory budget, bytes (millpond-bench's default: 1 GiB). */
    long memoryBudget = 1L << 30;
    /** JVM heap of the measured JVMs (-Xmx); 0 = the backend's default (see FlinkState.heapBytes). */
    long heap = 0;
    /** Map entries per key in the MapState phases; 0 skips them. */
    int mapEntries = 16;
    /** Run the plain java.util.HashMap baseline in the launcher. */
    boolean baseline = true;
    /**
     * Where the work directory (DB files, checkpoints) is made; default: the system temp dir.
     * It is removed at the end unless --keep.
     */
    Path dir;
    /** Keep the work directory. */
    boolean keep;
    /** Internal: the work directory the launcher made, passed to the children. */
    Path work;

    static Args parse(String[] argv, int from) {
        Args a = new Args();
        for (int i = from; i < argv.length; i++) {
            String opt = argv[i];
            switch (opt) {
                case "--no-baseline" -> a.baseline = false;
                case "--keep" -> a.keep = true;
                default -> {
                    if (i + 1 >= argv.length) {
                        throw new IllegalArgumentException("missing value for " + opt);
                    }
                    String v = argv[++i];
                    switch (opt) {
                        case "--backend" -> a.backend = v;
                        case "--keys" -> a.keys = Long.parseLong(v);
                        case "--value-bytes" -> a.valueBytes = Integer.parseInt(v);
                        case "--values" -> a.values = v;
                        case "--seconds" -> a.seconds = Double.parseDouble(v);
                        case "--zipf" -> a.zipf = Double.parseDouble(v);
                        case "--memory-budget" -> a.memoryBudget = parseBytes(v);
                        case "--heap" -> a.heap = parseBytes(v);
                        case "--map-entries" -> a.mapEntries = Integer.parseInt(v);
                        case "--dir" -> a.dir = Path.of(v);
                        case "--work" -> a.work = Path.of(v);
                        default -> throw new IllegalArgumentException("unknown option " + opt);
                    }
                }
            }
        }
        if (a.keys < 1 || a.keys > Integer.MAX_VALUE || a.valueBytes < 8) {
            throw new IllegalArgumentException("need 1 <= keys <= 2^31-1 and value-bytes >= 8");
        }
        if (!a.values.equals("text") && !a.values.equals("zeros")) {
            throw new IllegalArgumentException("--values must be text or zeros");
        }
        return a;
    }

    /** The options again, for a child process. */
    List<String> toArgv() {
        List<String> l = new ArrayList<>(List.of(
                "--backend", backend,
                "--keys", Long.toString(keys),
                "--value-bytes", Integer.toString(valueBytes),
                "--values", values,
                "--seconds", Double.toString(seconds),
                "--zipf", Double.toString(zipf),
                "--memory-budget", Long.toString(memoryBudget),
                "--heap", Long.toString(heap),
                "--map-entries", Integer.toString(mapEntries)));
        if (work != null) {
            l.addAll(List.of("--work", work.toString()));
        }
        return l;
    }

    /** Sizes like 1000, 64K, 110M, 2G (powers of 1024) or 1.5G, as millpond-bench parses them. */
    static long parseBytes(String s) {
        s = s.trim();
        long mult = switch (Character.toUpperCase(s.charAt(s.length() - 1))) {
            case 'K' -> 1L << 10;
            case 'M' -> 1L << 20;
            case 'G' -> 1L << 30;
            default -> 1;
        };
        String num = mult == 1 ? s : s.substring(0, s.length() - 1);
        return (long) (Double.parseDouble(num) * mult);
    }

    static final String USAGE =
            "usage: java -jar millpond-flink-peer.jar state --backend hashmap|rocksdb|forst\n"
                    + "         [--keys N] [--value-bytes B] [--values text|zeros] [--seconds S]\n"
                    + "         [--zipf S] [--memory-budget BYTES] [--heap BYTES] [--map-entries M]\n"
                    + "         [--dir DIR] [--keep] [--no-baseline]\n"
                    + "Prints one JSON line on stdout; progress on stderr. See benches/flink/README.md.";
}
