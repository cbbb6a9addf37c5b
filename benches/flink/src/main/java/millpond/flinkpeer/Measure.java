package millpond.flinkpeer;

import org.HdrHistogram.Histogram;
import org.apache.commons.math3.distribution.ZipfDistribution;
import org.apache.commons.math3.random.Well19937c;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ArrayNode;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.stream.Stream;

/** Measuring helpers, the same as millpond-bench's (benches/src/util.rs and state.rs). */
final class Measure {
    private Measure() {}

    /** Resident set size of this process, bytes (VmRSS in /proc/self/status). */
    static long rssBytes() {
        return statusKb("VmRSS:") * 1024;
    }

    /** Peak resident set size of this process, bytes (VmHWM). */
    static long peakRssBytes() {
        return statusKb("VmHWM:") * 1024;
    }

    private static long statusKb(String field) {
        try {
            for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
                if (line.startsWith(field)) {
                    return Long.parseLong(line.substring(field.length()).trim().split("\\s+")[0]);
                }
            }
        } catch (IOException | RuntimeException e) {
            // not Linux: report 0, as millpond-bench does
        }
        return 0;
    }

    /** A latency histogram in nanoseconds, 1 ns to 60 s, 3 significant digits. */
    static Histogram histogram() {
        return new Histogram(1, 60_000_000_000L, 3);
    }

    /** The percentiles of a latency distribution in the JSON (millpond's side reports the same). */
    static final double[] PERCENTILES = {
        0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 99.999, 100
    };

    /**
     * h as a JSON array of [percentile, ns] pairs at {@link #PERCENTILES}; 0 is the histogram's
     * minimum and 100 its maximum.
     */
    static ArrayNode percentiles(Histogram h) {
        ArrayNode out = Main.JSON.createArrayNode();
        for (double p : PERCENTILES) {
            long ns = p == 0 ? h.getMinValue() : p == 100 ? h.getMaxValue() : h.getValueAtPercentile(p);
            out.addArray().add(p).add(ns);
        }
        return out;
    }

    /** xorshift64*, bit for bit the generator of millpond-bench's util::Rng. */
    static final class Rng {
        private long s;

        Rng(long seed) {
            s = seed == 0 ? 1 : seed;
        }

        long next() {
            long x = s;
            x ^= x >>> 12;
            x ^= x << 25;
            x ^= x >>> 27;
            s = x;
            return x * 0x2545_f491_4f6c_dd1dL;
        }

        /** Uniform in [0, n): the high 64 bits of the unsigned 128-bit product next * n. */
        long below(long n) {
            long x = next();
            return Math.multiplyHigh(x, n) + ((x >> 63) & n);
        }
    }

    /**
     * The key indices the measured phases cycle through (2^20 of them), drawn as millpond-bench
     * draws them: uniform with xorshift64* seeded 0x5eed (the same sequence), or Zipf ranks
     * scattered over the key space with the same multiplicative hash (same distribution; the
     * Zipf sampler, commons-math3's rejection-inversion, is not rand_distr's, so not the same
     * sequence).
     */
    static int[] keySequence(long keys, double zipf) {
        int[] seq = new int[1 << 20];
        if (zipf > 0) {
            ZipfDistribution z = new ZipfDistribution(new Well19937c(42), (int) keys, zipf);
            for (int i = 0; i < seq.length; i++) {
                long rank = z.sample() - 1;
                seq[i] = (int) Long.remainderUnsigned(rank * 0x9e37_79b9_7f4a_7c15L, keys);
            }
        } else {
            Rng rng = new Rng(0x5eed);
            for (int i = 0; i < seq.length; i++) {
                seq[i] = (int) rng.below(keys);
            }
        }
        return seq;
    }

    private static final byte[][] WORDS = words(
            "user", "click", "view", "session", "page", "home", "cart", "checkout", "search",
            "mobile", "desktop", "true", "false", "null", "event", "ts", "id", "country", "de",
            "us", "fr", "price", "item", "category", "referrer", "campaign", "email", "open",
            "ok", "error", "type", "value");
    private static final byte[] SEPARATORS = {' ', ',', ':', '"'};

    private static byte[][] words(String... w) {
        byte[][] b = new byte[w.length][];
        for (int i = 0; i < w.length; i++) {
            b[i] = w[i].getBytes(java.nio.charset.StandardCharsets.US_ASCII);
        }
        return b;
    }

    /**
     * The value of key k as loaded: with text, bit for bit millpond-bench recovery's
     * Keys::value(k, 0) (an 8-byte little-endian counter, 0, then words from a 32-word
     * vocabulary and 5-digit numbers, determined by the key, which compress about as real
     * records do: LZ4 to ~0.64); without, zeros, as millpond-bench's state bench loads.
     */
    static byte[] value(long k, int valueBytes, boolean text) {
        byte[] out = new byte[valueBytes];
        if (!text) {
            return out;
        }
        int len = 8;
        Rng rng = new Rng((k + 1) * 0x9e37_79b9_7f4a_7c15L);
        while (len < valueBytes) {
            long r = rng.next();
            if (Long.remainderUnsigned(r, 5) == 0) {
                long x = Long.remainderUnsigned(r >>> 32, 100_000);
                for (int d = 4; d >= 0; d--, x /= 10) {
                    if (len + d < valueBytes) {
                        out[len + d] = (byte) ('0' + x % 10);
                    }
                }
                len += 5;
            } else {
                byte[] w = WORDS[(int) Long.remainderUnsigned(r >>> 8, WORDS.length)];
                System.arraycopy(w, 0, out, len, Math.min(w.length, valueBytes - len));
                len += w.length;
            }
            if (len < valueBytes) {
                out[len] = SEPARATORS[(int) Long.remainderUnsigned(r >>> 16, SEPARATORS.length)];
            }
            len++;
        }
        return out;
    }

    /** Bumps the little-endian u64 counter in a value's first 8 bytes (millpond-bench's bump). */
    static void bump(byte[] v) {
        long n = 0;
        for (int i = 7; i >= 0; i--) {
            n = (n << 8) | (v[i] & 0xff);
        }
        n++;
        for (int i = 0; i < 8; i++) {
            v[i] = (byte) (n >>> (8 * i));
        }
    }

    /** An operation on key index k, for {@link #timed}. */
    interface KeyOp {
        void run(long k) throws Exception;
    }

    /**
     * Runs op over the key sequence for the given seconds, checking the clock every 1024 ops as
     * millpond-bench does; returns ops per second.
     */
    static double timed(double seconds, int[] seq, KeyOp op) throws Exception {
        long deadline = (long) (seconds * 1e9);
        long start = System.nanoTime();
        long n = 0;
        outer:
        while (true) {
            for (int base = 0; base < seq.length; base += 1024) {
                for (int i = base; i < base + 1024; i++) {
                    op.run(seq[i]);
                }
                n += 1024;
                if (System.nanoTime() - start >= deadline) {
                    break outer;
                }
            }
        }
        return n / ((System.nanoTime() - start) / 1e9);
    }

    /** A read on key index k, for {@link #timedReads}: its result, or null for a miss. */
    interface KeyRead {
        Object run(long k) throws Exception;
    }

    /**
     * Like {@link #timed}, but times every read on its own into h (as millpond-bench times each
     * get) and counts the reads that found something in hits[0]; returns reads per second.
     */
    static double timedReads(double seconds, int[] seq, Histogram h, long[] hits, KeyRead op)
            throws Exception {
        return timed(seconds, seq, k -> {
            long t = System.nanoTime();
            Object v = op.run(k);
            h.recordValue(Math.max(1, System.nanoTime() - t));
            if (v != null) {
                hits[0]++;
            }
        });
    }

    /** Bytes of all regular files under dir (0 if it does not exist). */
    static long dirBytes(Path dir) throws IOException {
        if (!Files.exists(dir)) {
            return 0;
        }
        try (Stream<Path> files = Files.walk(dir)) {
            return files.filter(Files::isRegularFile).mapToLong(p -> p.toFile().length()).sum();
        }
    }

    /** Regular files under dir. */
    static long dirFiles(Path dir) throws IOException {
        if (!Files.exists(dir)) {
            return 0;
        }
        try (Stream<Path> files = Files.walk(dir)) {
            return files.filter(Files::isRegularFile).count();
        }
    }

    static double round3(double x) {
        return Math.round(x * 1000.0) / 1000.0;
    }

    /** The 1-minute load average: other work on the machine shows in every figure. */
    static double loadavg1m() {
        try {
            return Double.parseDouble(Files.readString(Path.of("/proc/loadavg")).split(" ")[0]);
        } catch (IOException | RuntimeException e) {
            return -1;
        }
    }
}
