package millpond.flinkpeer;

import org.HdrHistogram.Histogram;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;

import java.io.IOException;
import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;

/**
 * Entry point. {@code state} is a small launcher: it starts the measured JVMs with the heap the
 * backend's memory configuration asks for (so the user need not pass -Xmx), collects their JSON,
 * runs the plain-HashMap baseline itself, and prints one merged JSON line:
 *
 * <ol>
 *   <li>{@code state-run} (child JVM 1): load, update, get, timeline (updates with a checkpoint
 *       taken during them), MapState phases;
 *   <li>{@code restore-run} (child JVM 2, fresh, page cache dropped if allowed): restore from
 *       that checkpoint, first get, full pass over all keys.
 * </ol>
 */
public final class Main {
    /** Taken as the class initializes, before main: "the first line of main". */
    static final long MAIN_START_NANOS = System.nanoTime();
    static final long JVM_UPTIME_AT_MAIN_MS = ManagementFactory.getRuntimeMXBean().getUptime();

    static final ObjectMapper JSON = new ObjectMapper();

    public static void main(String[] argv) {
        if (argv.length == 0 || argv[0].equals("--help") || argv[0].equals("-h")) {
            System.err.println(Args.USAGE);
            System.exit(argv.length == 0 ? 2 : 0);
        }
        Args a;
        try {
            a = Args.parse(argv, 1);
        } catch (RuntimeException e) {
            System.err.println("flink-peer: " + e.getMessage() + "\n" + Args.USAGE);
            System.exit(2);
            return;
        }
        ObjectNode out;
        int code = 0;
        try {
            out = switch (argv[0]) {
                case "state" -> launch(a);
                case "state-run" -> StateRun.run(a);
                case "restore-run" -> RestoreRun.run(a);
                default -> throw new IllegalArgumentException("unknown command " + argv[0]);
            };
            if (out.has("error")) {
                code = 1;
            }
        } catch (Throwable e) { // an OutOfMemoryError of the heap backend is a result too
            e.printStackTrace();
            out = JSON.createObjectNode();
            out.put("bench", "state").put("peer", "flink").put("backend", a.backend);
            out.put("error", argv[0] + ": " + e);
            code = 1;
        }
        System.out.println(out.toString());
        System.out.flush();
        // Flink leaves non-daemon threads (I/O manager, ForSt loader pool) behind.
        System.exit(code);
    }

    /** JVM options of the measured children. */
    static List<String> jvmOptions(Args a) {
        List<String> o = new ArrayList<>();
        o.add("-Xmx" + FlinkState.heapBytes(a));
        // A TaskManager's defaults: G1 and a 256 MiB metaspace cap (taskmanager.memory.jvm-metaspace.size).
        o.add("-XX:+UseG1GC");
        o.add("-XX:MaxMetaspaceSize=256m");
        return o;
    }

    static ObjectNode launch(Args a) throws Exception {
        // A fresh work directory, in --dir or the system temp dir, removed at the end unless --keep.
        if (a.dir != null) {
            Files.createDirectories(a.dir);
            a.work = Files.createTempDirectory(a.dir, "millpond-flink-peer-");
        } else {
            a.work = Files.createTempDirectory("millpond-flink-peer-");
        }
        System.err.println("flink-peer: work directory " + a.work);
        try {
            ObjectNode out = JSON.createObjectNode();
            double load0 = Measure.loadavg1m();
            ObjectNode run = child("state-run", a);
            out.setAll(run);
            if (run.has("error")) {
                return out;
            }
            boolean dropped = dropCaches();
            long t = System.nanoTime();
            ObjectNode restored = child("restore-run", a);
            out.put("restore_child_wall_seconds", Measure.round3((System.nanoTime() - t) / 1e9));
            out.put("page_cache_dropped", dropped);
            out.setAll(restored);
            if (a.baseline && !restored.has("error")) {
                baseline(a, out);
            }
            out.set("jvm_options", JSON.valueToTree(jvmOptions(a)));
            out.put("java_version", System.getProperty("java.version"));
            out.put("cpus", Runtime.getRuntime().availableProcessors());
            out.put("loadavg_1m_at_start", load0);
            out.put("loadavg_1m_at_end", Measure.loadavg1m());
            return out;
        } finally {
            if (!a.keep) {
                FlinkState.deleteRecursively(a.work);
            }
        }
    }

    /** Runs this jar's command in a fresh JVM; its stderr passes through, its last stdout line is JSON. */
    static ObjectNode child(String command, Args a) throws IOException, InterruptedException {
        List<String> cmd = new ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        cmd.addAll(jvmOptions(a));
        cmd.add("-cp");
        cmd.add(Path.of(System.getProperty("java.class.path").split(java.io.File.pathSeparator)[0])
                .toAbsolutePath().toString());
        cmd.add(Main.class.getName());
        cmd.add(command);
        cmd.addAll(a.toArgv());
        Process p = new ProcessBuilder(cmd)
                .redirectError(ProcessBuilder.Redirect.INHERIT)
                .redirectInput(ProcessBuilder.Redirect.INHERIT)
                .start();
        String stdout = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        int code = p.waitFor();
        String last = stdout.lines().filter(l -> l.startsWith("{")).reduce((x, y) -> y).orElse(null);
        if (last == null) {
            ObjectNode e = JSON.createObjectNode();
            e.put("bench", "state").put("peer", "flink").put("backend", a.backend);
            e.put("error", command + " exited " + code + " without a JSON line");
            return e;
        }
        return (ObjectNode) JSON.readTree(last);
    }

    /** sync, then drop the page cache (as millpond-bench's recovery does); false if not allowed. */
    static boolean dropCaches() {
        try {
            new ProcessBuilder("sync").inheritIO().start().waitFor();
            Files.writeString(Path.of("/proc/sys/vm/drop_caches"), "3");
            return true;
        } catch (Exception e) {
            return false;
        }
    }

    /**
     * The same read-modify-write and timed gets on a plain java.util.HashMap holding the same
     * keys, in this (launcher) JVM: what the JVM and memory alone cost on this machine, as
     * millpond-bench's baseline is for millpond. One thread and no lock (a Flink task is single
     * threaded); the value is bumped in place, as a heap-backend value would be.
     */
    static void baseline(Args a, ObjectNode out) throws Exception {
        System.err.println("flink-peer: baseline: java.util.HashMap<Long, byte[]> with " + a.keys + " keys");
        HashMap<Long, byte[]> map = new HashMap<>();
        for (long k = 0; k < a.keys; k++) {
            map.put(k, new byte[a.valueBytes]);
        }
        int[] seq = Measure.keySequence(a.keys, a.zipf);
        double updates = Measure.timed(a.seconds, seq, k -> {
            byte[] v = map.get(k);
            Measure.bump(v);
            map.put(k, v);
        });
        Histogram h = Measure.histogram();
        Measure.timedReads(a.seconds, seq, h, new long[1], map::get);
        out.put("baseline_update_ops_per_sec", Math.round(updates));
        out.put("baseline_get_ns_p50", h.getValueAtPercentile(50));
        out.put("baseline_get_ns_p99", h.getValueAtPercentile(99));
        out.put("baseline_get_ns_p999", h.getValueAtPercentile(99.9));
        if (out.has("update_ops_per_sec")) {
            out.put("update_vs_baseline",
                    Measure.round3(out.get("update_ops_per_sec").asDouble() / updates));
        }
    }
}
