// devprof-llamarunner: devprof's own llama.cpp runner (one greedy generation, measured).
//
// Built statically against the pinned llama.cpp (scripts/build-device-bins) for arm64 phones and
// x86-64 hosts; the same code runs on both. Usage:
//
//   devprof-llamarunner -m MODEL.gguf --prompt-ids IDS -n N [-t THREADS] [--routing-trace OUT.npz]
//                       [--evict] [-c CTX] [-b BATCH] [-ub UBATCH] [-fa on|off|auto] [--no-mmap]
//                       [-nr|--no-repack] [--warmup] [--decode-ids IDS] [-v]
//
//   --prompt-ids IDS   the prompt as token ids, one per line (the workload's exact tokens)
//   -n N               generate exactly N tokens greedily, EOS ignored: the first from the prompt
//                      pass, then N-1 single-token decode calls
//   -t THREADS         threads (default: the big cores, i.e. online CPUs whose cpuinfo_max_freq is
//                      at least 75% of the highest, capped by the CPU affinity mask); -1/0 = default
//   --evict            drop the model file from the page cache first (posix_fadvise DONTNEED: no
//                      root needed); pages mapped by another process stay
//   --routing-trace    the experts of every (layer, token) in routing.py's .npz format (keys below);
//                      the prompt is then decoded with outputs for all tokens, so llama.cpp runs the
//                      last layer's FFN for every prompt token and the trace is complete
//                      (``computed`` all true); costs the lm_head on every prompt token
//   -nr, --no-repack   keep the weights in their file-backed mapping (no CPU "repack" copies into
//                      anonymous memory; slower Q4_0/Q8_0 kernels)
//   --decode-ids IDS   feed these ids (one per line, at least N-1) to the N-1 decode calls instead
//                      of the sampled tokens; sampling still runs and the sampled ids are printed.
//                      llama-bench's decode feeds random ids: greedy decoding on seeded random
//                      weights repeats one token, so an MoE reads the same few experts each step
//                      (devprof bench compares the runner with llama-bench on the same kind of ids)
//   --warmup           one untimed generation first (same prompt and N), then the KV cache,
//                      sampler and llama.cpp's perf counters are reset (devprof bench uses it)
//   Accepted and ignored for llama-cli compatibility: --temp 0, --ignore-eos, -no-cnv,
//   --no-display-prompt, --no-warmup, -s SEED.
//
// Output. stdout: the generated ids, space-separated, one line. stderr: llama.cpp's perf lines
// (llama_perf_sampler_print / llama_perf_context_print in llama.cpp's exact format; the llamacpp
// adapter's parse_llama_perf reads them: that is the one stats format). The runner prints them
// from its own clock (every llama_decode + llama_synchronize timed; load = model load + context
// creation), because llama.cpp's counters lose a prompt pass whose outputs grow the output buffer
// (it synchronizes and restarts its clock before computing); -v adds llama.cpp's own. Then
// devprof's lines, each "devprof_<what>: " + one JSON object:
//   devprof_residency: {"stage": "before_load"|"after_prefill"|"exit", "resident_kb": R,
//                       "file_kb": F, "evicted": bool}          (mincore of the model file)
//   devprof_tokens: {"prefill_start_ms": 0, "prefill_end_ms": P, "token_ms": [t1, ..., tN]}
//                   (ms since the prefill started, at which each new token was sampled)
//   devprof_status: {"VmHWM": kB, "VmRSS": kB, "RssAnon": kB, "RssFile": kB, "VmSwap": kB}
//                   (the runner's own /proc/self/status at exit: the peak cannot be missed)
// Errors: one line "devprof-llamarunner: error: ..." and exit 2 for bad input (missing or bad file,
// bad ids, context too large, bad flags), 1 for a failure on good input.
//
// Routing traces (llama.cpp's eval callback answers "yes" only for ffn_moe_topk-<layer>, the
// int32 [tokens, top_k] selected-expert ids; every yes splits the graph there). The .npz keys are
// those of devprof.routing / the reference runtime: experts uint8 [layers, tokens, top_k],
// computed bool [layers, tokens], n_prompt, n_decode, n_experts, top_k, layer_block_bytes,
// block_offsets, block_nbytes, block_ranges int64 [layers, experts, 3, 2] (file offset and
// bytes of the expert's gate/up/down slice in the GGUF), model, bundle_id, runtime.
// tokens = n_prompt + N - 1 (the last sampled token is never decoded).

#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"
#include "gguf.h"
#include "llama.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <deque>
#include <string>
#include <vector>

static const char *PROG = "devprof-llamarunner";

struct Exit {
    int code;
    std::string msg;
};

[[noreturn]] static void fail(int code, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    for (char *p = buf; *p; ++p)
        if (*p == '\n' || *p == '\r') *p = ' ';
    throw Exit{code, buf};
}

static double now_ms() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

// ---- llama.cpp's log: kept (for error messages), shown with -v or while printing perf --------

static bool g_log_pass = false;
static std::deque<std::string> g_log;

static void log_cb(enum ggml_log_level level, const char *text, void *) {
    (void)level;
    if (g_log_pass) {
        fputs(text, stderr);
        fflush(stderr);
    }
    if (g_log.size() >= 200) g_log.pop_front();
    g_log.emplace_back(text);
}

static std::string last_error() {
    for (const char *word : {"error", "failed"}) {
        for (auto it = g_log.rbegin(); it != g_log.rend(); ++it) {
            std::string s = *it;
            std::string low = s;
            for (auto &c : low) c = (char)tolower((unsigned char)c);
            if (low.find(word) != std::string::npos) {
                while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
                return s;
            }
        }
    }
    return g_log.empty() ? std::string("no log") : g_log.back();
}

// ---- input --------------------------------------------------------------------------------

static std::vector<llama_token> read_ids(const std::string &path) {
    FILE *f = fopen(path.c_str(), "rb");
    if (!f) fail(2, "prompt ids file %s: %s", path.c_str(), errno == ENOENT ? "not found" : strerror(errno));
    std::vector<llama_token> ids;
    char line[256];
    int lineno = 0;
    while (fgets(line, sizeof line, f)) {
        ++lineno;
        size_t len = strlen(line);
        if (len == sizeof line - 1 && line[len - 1] != '\n') {
            fclose(f);
            fail(2, "%s:%d: line too long for a token id", path.c_str(), lineno);
        }
        char *s = line;
        while (*s == ' ' || *s == '\t') ++s;
        char *e = s + strlen(s);
        while (e > s && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t')) *--e = 0;
        if (!*s) continue;
        char *end = nullptr;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (*end || errno || end == s) {
            fclose(f);
            fail(2, "%s:%d: not an integer token id: '%.40s'", path.c_str(), lineno, s);
        }
        if (v < 0 || v > INT32_MAX) {
            fclose(f);
            fail(2, "%s:%d: token id %lld out of range", path.c_str(), lineno, v);
        }
        ids.push_back((llama_token)v);
    }
    fclose(f);
    if (ids.empty()) fail(2, "%s: no token ids", path.c_str());
    return ids;
}

static void check_gguf(const std::string &path) {
    FILE *f = fopen(path.c_str(), "rb");
    if (!f) fail(2, "model file %s: %s", path.c_str(), errno == ENOENT ? "not found" : strerror(errno));
    char magic[4] = {0};
    size_t n = fread(magic, 1, 4, f);
    fclose(f);
    if (n != 4 || memcmp(magic, "GGUF", 4) != 0) fail(2, "not a GGUF file: %s", path.c_str());
}

// ---- page cache -----------------------------------------------------------------------------

static bool g_evicted = false;

static void evict(const std::string &path) {
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) fail(2, "cannot open %s: %s", path.c_str(), strerror(errno));
    fdatasync(fd);  // only clean pages can be dropped (a read-only file has no dirty ones)
    int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    if (rc != 0) fail(1, "posix_fadvise(DONTNEED) on %s failed: %s", path.c_str(), strerror(rc));
    g_evicted = true;
}

// "devprof_residency: {...}" for the model file now (printed by the caller)
static std::string residency_line(const std::string &path, const char *stage) {
    long long resident = -1, total = 0;
    int fd = open(path.c_str(), O_RDONLY);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size > 0) {
        long page = sysconf(_SC_PAGESIZE);
        total = st.st_size;
        void *m = mmap(nullptr, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (m != MAP_FAILED) {
            size_t pages = ((size_t)st.st_size + page - 1) / page;
            std::vector<unsigned char> vec(pages);
            if (mincore(m, (size_t)st.st_size, vec.data()) == 0) {
                long long n = 0;
                for (unsigned char c : vec) n += c & 1;
                resident = n * page;
                if (resident > total) resident = total;
            }
            munmap(m, (size_t)st.st_size);
        }
    }
    if (fd >= 0) close(fd);
    char buf[256];
    if (resident < 0)
        snprintf(buf, sizeof buf, "devprof_residency: {\"stage\": \"%s\", \"resident_kb\": null, \"file_kb\": %lld, \"evicted\": %s}\n",
                 stage, total / 1024, g_evicted ? "true" : "false");
    else
        snprintf(buf, sizeof buf, "devprof_residency: {\"stage\": \"%s\", \"resident_kb\": %lld, \"file_kb\": %lld, \"evicted\": %s}\n",
                 stage, resident / 1024, total / 1024, g_evicted ? "true" : "false");
    return buf;
}

static void residency(const std::string &path, const char *stage) {
    fputs(residency_line(path, stage).c_str(), stderr);
    fflush(stderr);
}

static void print_status() {
    const char *keys[] = {"VmHWM", "VmRSS", "RssAnon", "RssFile", "VmSwap"};
    long long vals[5] = {-1, -1, -1, -1, -1};
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f)) {
            for (int i = 0; i < 5; ++i) {
                size_t k = strlen(keys[i]);
                if (strncmp(line, keys[i], k) == 0 && line[k] == ':') vals[i] = strtoll(line + k + 1, nullptr, 10);
            }
        }
        fclose(f);
    }
    std::string out = "devprof_status: {";
    for (int i = 0; i < 5; ++i) {
        char buf[64];
        if (vals[i] < 0)
            snprintf(buf, sizeof buf, "%s\"%s\": null", i ? ", " : "", keys[i]);
        else
            snprintf(buf, sizeof buf, "%s\"%s\": %lld", i ? ", " : "", keys[i], vals[i]);
        out += buf;
    }
    out += "}\n";
    fputs(out.c_str(), stderr);
    fflush(stderr);
}

// ---- threads: the big cores ------------------------------------------------------------------

static std::vector<int> affinity_cpus() {
    cpu_set_t set;
    std::vector<int> cpus;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        for (int c = 0; c < CPU_SETSIZE; ++c)
            if (CPU_ISSET(c, &set)) cpus.push_back(c);
    }
    return cpus;
}

static int default_threads() {
    std::vector<int> cpus = affinity_cpus();
    if (cpus.empty()) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (int)n : 1;
    }
    std::vector<long> freq;
    long best = 0;
    for (int c : cpus) {
        char p[128];
        snprintf(p, sizeof p, "/sys/devices/system/cpu/cpu%d/cpufreq/cpuinfo_max_freq", c);
        long v = 0;
        if (FILE *f = fopen(p, "r")) {
            if (fscanf(f, "%ld", &v) != 1) v = 0;
            fclose(f);
        }
        freq.push_back(v);
        if (v > best) best = v;
    }
    if (best <= 0) return (int)cpus.size();
    int n = 0;
    for (long v : freq)
        if (v * 4 >= best * 3) ++n;
    return n > 0 ? n : (int)cpus.size();
}

// ---- routing trace ---------------------------------------------------------------------------

struct Collector {
    int n_layers = 0;
    std::vector<std::vector<int32_t>> pending;  // per layer: rows * k ids of the current decode call
    std::vector<int> pending_rows;
    int k = 0;
    std::string error;
};

static const char TOPK[] = "ffn_moe_topk-";

static bool eval_cb(struct ggml_tensor *t, bool ask, void *ud) {
    auto *c = (Collector *)ud;
    const char *name = ggml_get_name(t);
    if (strncmp(name, TOPK, sizeof TOPK - 1) != 0) return !ask;  // ask: no; told: continue
    if (ask) return true;
    int layer = atoi(name + sizeof TOPK - 1);
    if (layer < 0 || layer >= c->n_layers) return true;
    if (t->type != GGML_TYPE_I32 || t->ne[2] != 1 || t->ne[3] != 1) {
        if (c->error.empty()) c->error = std::string("unexpected routing tensor ") + name;
        return true;
    }
    if (t->buffer && !ggml_backend_buffer_is_host(t->buffer)) {
        if (c->error.empty()) c->error = "routing tensor is not in host memory";
        return true;
    }
    int64_t k = t->ne[0], rows = t->ne[1];
    if (c->k == 0) c->k = (int)k;
    if (k != c->k) {
        if (c->error.empty()) c->error = "routing tensor width changed";
        return true;
    }
    auto &dst = c->pending[layer];
    const char *base = (const char *)t->data;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < k; ++j) dst.push_back(*(const int32_t *)(base + r * t->nb[1] + j * t->nb[0]));
    c->pending_rows[layer] += (int)rows;
    return true;
}

struct Trace {
    int n_layers = 0, k = 0, n_tokens = 0;
    std::vector<uint8_t> experts;   // [L, T, k]
    std::vector<uint8_t> computed;  // [L, T]
};

// ---- .npz writer (uncompressed zip of .npy files; numpy reads it) --------------------------------

static uint32_t crc32_of(const std::string &data) {
    static uint32_t table[256];
    static bool init = false;
    if (!init) {
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int j = 0; j < 8; ++j) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        init = true;
    }
    uint32_t c = 0xFFFFFFFFu;
    for (unsigned char b : data) c = table[(c ^ b) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static std::string npy(const std::string &descr, const std::vector<int64_t> &shape, const std::string &raw) {
    std::string sh = "(";
    for (size_t i = 0; i < shape.size(); ++i) {
        sh += std::to_string(shape[i]);
        if (shape.size() == 1 || i + 1 < shape.size()) sh += ",";
        if (i + 1 < shape.size()) sh += " ";
    }
    sh += ")";
    std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + sh + ", }";
    size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += '\n';
    std::string out("\x93NUMPY\x01\x00", 8);
    uint16_t hl = (uint16_t)header.size();
    out += (char)(hl & 0xFF);
    out += (char)(hl >> 8);
    return out + header + raw;
}

template <typename T> static std::string raw_of(const std::vector<T> &v) {
    return std::string((const char *)v.data(), v.size() * sizeof(T));
}

static std::string i64_scalar(int64_t v) { return std::string((const char *)&v, 8); }

static std::string utf32(const std::string &s, std::string *descr) {
    std::string out;
    size_t n = 0;
    for (size_t i = 0; i < s.size();) {
        unsigned char c = s[i];
        uint32_t cp;
        int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
        if (len == 1 || i + len > s.size()) {
            cp = c < 0x80 ? c : 0xFFFD;
        } else {
            cp = c & (0xFF >> (len + 1));
            for (int j = 1; j < len; ++j) cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        i += len;
        out.append((const char *)&cp, 4);
        ++n;
    }
    if (n == 0) {
        out.assign(4, '\0');
        n = 1;
    }
    *descr = "<U" + std::to_string(n);
    return out;
}

static void put16(std::string &s, uint16_t v) { s.append((const char *)&v, 2); }
static void put32(std::string &s, uint32_t v) { s.append((const char *)&v, 4); }

static void write_npz(const std::string &path, const std::vector<std::pair<std::string, std::string>> &members) {
    std::string tmp = path + ".tmp-" + std::to_string(getpid()) + ".npz";
    FILE *f = fopen(tmp.c_str(), "wb");
    if (!f) fail(1, "cannot write routing trace %s: %s", path.c_str(), strerror(errno));
    std::string central;
    uint32_t off = 0;
    for (auto &m : members) {
        std::string name = m.first + ".npy";
        uint32_t crc = crc32_of(m.second), sz = (uint32_t)m.second.size();
        std::string h;
        put32(h, 0x04034b50); put16(h, 20); put16(h, 0); put16(h, 0); put16(h, 0); put16(h, 0x21);
        put32(h, crc); put32(h, sz); put32(h, sz); put16(h, (uint16_t)name.size()); put16(h, 0);
        h += name;
        std::string c;
        put32(c, 0x02014b50); put16(c, 20); put16(c, 20); put16(c, 0); put16(c, 0); put16(c, 0); put16(c, 0x21);
        put32(c, crc); put32(c, sz); put32(c, sz); put16(c, (uint16_t)name.size()); put16(c, 0); put16(c, 0);
        put16(c, 0); put16(c, 0); put32(c, 0); put32(c, off);
        c += name;
        central += c;
        fwrite(h.data(), 1, h.size(), f);
        fwrite(m.second.data(), 1, m.second.size(), f);
        off += (uint32_t)(h.size() + m.second.size());
    }
    std::string end;
    put32(end, 0x06054b50); put16(end, 0); put16(end, 0); put16(end, (uint16_t)members.size());
    put16(end, (uint16_t)members.size()); put32(end, (uint32_t)central.size()); put32(end, off); put16(end, 0);
    fwrite(central.data(), 1, central.size(), f);
    fwrite(end.data(), 1, end.size(), f);
    bool ok = fflush(f) == 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
        unlink(tmp.c_str());
        fail(1, "cannot write routing trace %s: %s", path.c_str(), strerror(errno));
    }
}

static std::string meta(const llama_model *model, const char *key) {
    char buf[4096];
    int n = llama_model_meta_val_str(model, key, buf, sizeof buf);
    return n >= 0 ? std::string(buf) : std::string();
}

// (offset, bytes) of each expert's gate/up/down slice: int64 [L, E, 3, 2]
static std::vector<int64_t> expert_ranges(const std::string &path, int L, int E) {
    std::vector<int64_t> out((size_t)L * E * 6, 0);
    if (!E) return out;
    struct gguf_init_params p = {true, nullptr};
    struct gguf_context *g = gguf_init_from_file(path.c_str(), p);
    if (!g) fail(1, "cannot read the GGUF tensor table of %s", path.c_str());
    size_t data = gguf_get_data_offset(g);
    const char *kinds[3] = {"gate", "up", "down"};
    for (int l = 0; l < L; ++l)
        for (int j = 0; j < 3; ++j) {
            char name[96];
            snprintf(name, sizeof name, "blk.%d.ffn_%s_exps.weight", l, kinds[j]);
            int64_t id = gguf_find_tensor(g, name);
            if (id < 0) continue;
            int64_t off = (int64_t)(data + gguf_get_tensor_offset(g, id));
            int64_t per = (int64_t)gguf_get_tensor_size(g, id) / E;
            for (int e = 0; e < E; ++e) {
                size_t at = (((size_t)l * E + e) * 3 + j) * 2;
                out[at] = off + e * per;
                out[at + 1] = per;
            }
        }
    gguf_free(g);
    return out;
}

// ---- arguments ---------------------------------------------------------------------------------

struct Args {
    std::string model, ids_path, trace_path, text_path, logits_path, decode_ids_path, kv_type = "f16";
    bool tokenize_only = false;
    int n_predict = 128, threads = -1, threads_batch = -1, ctx = 0, batch = 512, ubatch = 512;
    std::string flash_attn = "auto";
    bool mmap = true, repack = true, evict = false, verbose = false, warmup = false;
};

static long parse_int(const char *flag, const char *v) {
    char *end = nullptr;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno) fail(2, "%s needs an integer, got '%.40s'", flag, v);
    return x;
}

static Args parse_args(int argc, char **argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        std::string f = argv[i];
        auto val = [&]() -> const char * {
            if (i + 1 >= argc) fail(2, "%s needs a value", f.c_str());
            return argv[++i];
        };
        if (f == "-m" || f == "--model") a.model = val();
        else if (f == "--prompt-ids") a.ids_path = val();
        else if (f == "--decode-ids") a.decode_ids_path = val();
        else if (f == "-f" || f == "--file") a.text_path = val();
        else if (f == "--tokenize-only") a.tokenize_only = true;
        else if (f == "--prompt-logits") a.logits_path = val();
        else if (f == "--kv-type") {
            a.kv_type = val();
            if (a.kv_type != "f16" && a.kv_type != "f32" && a.kv_type != "q8_0")
                fail(2, "--kv-type must be f16, f32 or q8_0, got '%s'", a.kv_type.c_str());
        }
        else if (f == "-n" || f == "--n-predict") a.n_predict = (int)parse_int(f.c_str(), val());
        else if (f == "-t" || f == "--threads") a.threads = (int)parse_int(f.c_str(), val());
        else if (f == "-tb" || f == "--threads-batch") a.threads_batch = (int)parse_int(f.c_str(), val());
        else if (f == "-c" || f == "--ctx-size") a.ctx = (int)parse_int(f.c_str(), val());
        else if (f == "-b" || f == "--batch-size") a.batch = (int)parse_int(f.c_str(), val());
        else if (f == "-ub" || f == "--ubatch-size") a.ubatch = (int)parse_int(f.c_str(), val());
        else if (f == "-fa" || f == "--flash-attn") {
            a.flash_attn = val();
            if (a.flash_attn != "on" && a.flash_attn != "off" && a.flash_attn != "auto")
                fail(2, "-fa must be on, off or auto, got '%s'", a.flash_attn.c_str());
        } else if (f == "--routing-trace") a.trace_path = val();
        else if (f == "--evict") a.evict = true;
        else if (f == "--warmup") a.warmup = true;
        else if (f == "--no-mmap") a.mmap = false;
        else if (f == "--mmap") a.mmap = true;
        else if (f == "-nr" || f == "--no-repack") a.repack = false;
        else if (f == "-v" || f == "--verbose") a.verbose = true;
        else if (f == "--temp") {
            const char *v = val();
            char *end = nullptr;
            double t = strtod(v, &end);
            if (*end || t != 0.0) fail(2, "only greedy decoding is supported (--temp 0), got '%s'", v);
        } else if (f == "-s" || f == "--seed") parse_int(f.c_str(), val());
        else if (f == "--ignore-eos" || f == "-no-cnv" || f == "--no-conversation" || f == "--no-display-prompt") {
        } else if (f == "--no-warmup") a.warmup = false; else if (f == "-h" || f == "--help") {
            printf("usage: %s -m MODEL.gguf --prompt-ids IDS -n N [-t THREADS] [--routing-trace OUT.npz] [--evict]\n"
                   "       [-c CTX] [-b BATCH] [-ub UBATCH] [-fa on|off|auto] [--no-mmap] [-nr|--no-repack] [--warmup] [--decode-ids IDS] [-v]\n",
                   PROG);
            exit(0);
        } else fail(2, "unknown argument '%.60s'", f.c_str());
    }
    if (a.model.empty()) fail(2, "-m MODEL.gguf is required");
    if (a.ids_path.empty() == a.text_path.empty()) fail(2, "give the prompt as --prompt-ids FILE (token ids) or -f FILE (text)");
    if (a.n_predict < 1) fail(2, "-n must be >= 1 (exactly N tokens are generated), got %d", a.n_predict);
    if (a.threads < -1 || a.threads_batch < -1) fail(2, "-t/-tb must be -1, 0 (default) or >= 1");
    if (a.ctx < 0) fail(2, "-c must be >= 0, got %d", a.ctx);
    if (a.batch < 2 || a.ubatch < 1) fail(2, "-b must be >= 2 and -ub >= 1");
    return a;
}

// ---- the run -------------------------------------------------------------------------------------

struct Run {
    llama_model *model = nullptr;
    llama_context *ctx = nullptr;
    llama_sampler *smpl = nullptr;
    llama_batch batch{};
    bool batch_ok = false;
    ggml_threadpool *pool = nullptr, *pool_batch = nullptr;
    decltype(ggml_threadpool_free) *pool_free = nullptr;
    ~Run() {
        if (batch_ok) llama_batch_free(batch);
        if (smpl) llama_sampler_free(smpl);
        if (ctx) llama_free(ctx);
        if (pool_batch) pool_free(pool_batch);
        if (pool) pool_free(pool);
        if (model) llama_model_free(model);
    }
};

// One persistent thread pool per context, as llama-bench and llama-cli attach theirs: without
// one, ggml creates and joins its worker threads on every graph, i.e. on every decode call.
static void attach_pools(Run &r, int threads, int threads_batch) {
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    ggml_backend_reg_t reg = dev ? ggml_backend_dev_backend_reg(dev) : nullptr;
    if (!reg) fail(1, "llama.cpp has no CPU backend");
    auto *pool_new = (decltype(ggml_threadpool_new) *)ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_new");
    r.pool_free = (decltype(ggml_threadpool_free) *)ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_free");
    if (!pool_new || !r.pool_free) fail(1, "llama.cpp's CPU backend has no thread pool functions");
    ggml_threadpool_params tpp = ggml_threadpool_params_default(threads);
    r.pool = pool_new(&tpp);
    if (threads_batch != threads) {
        tpp = ggml_threadpool_params_default(threads_batch);
        r.pool_batch = pool_new(&tpp);
    }
    if (!r.pool || (threads_batch != threads && !r.pool_batch))
        fail(1, "cannot start a pool of %d threads", std::max(threads, threads_batch));
    llama_attach_threadpool(r.ctx, r.pool, r.pool_batch);
}

static int run(const Args &a) {
    const int n_cpus = (int)affinity_cpus().size();
    if (n_cpus > 0 && std::max(a.threads, a.threads_batch) > n_cpus)
        fprintf(stderr, "%s: warning: %d threads on the %d CPUs this process may use: ggml's threads spin at a barrier "
                "after every op, so more threads than free cores collapses the speed\n", PROG,
                std::max(a.threads, a.threads_batch), n_cpus);
    check_gguf(a.model);
    std::vector<llama_token> ids;
    std::string text;
    if (!a.ids_path.empty()) {
        ids = read_ids(a.ids_path);
    } else {
        FILE *f = fopen(a.text_path.c_str(), "rb");
        if (!f) fail(2, "prompt file %s: %s", a.text_path.c_str(), errno == ENOENT ? "not found" : strerror(errno));
        char buf[65536];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
        fclose(f);
        if (text.empty()) fail(2, "empty prompt file %s", a.text_path.c_str());
    }
    if (!a.trace_path.empty()) {
        std::string dir = a.trace_path.substr(0, a.trace_path.find_last_of('/') == std::string::npos
                                                         ? 0 : a.trace_path.find_last_of('/') + 1);
        struct stat st;
        if (!dir.empty() && (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)))
            fail(2, "routing trace folder does not exist: %s", dir.c_str());
    }
    if (a.evict) evict(a.model);
    const std::string before_load = residency_line(a.model, "before_load");  // printed once the input is known good

    const double t_start = now_ms();
    llama_log_set(log_cb, nullptr);
    g_log_pass = a.verbose;
    llama_backend_init();
    Run r;
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.load_mode = a.mmap ? LLAMA_LOAD_MODE_MMAP : LLAMA_LOAD_MODE_NONE;
    mp.use_extra_bufts = a.repack;
    r.model = llama_model_load_from_file(a.model.c_str(), mp);
    if (!r.model) fail(2, "llama.cpp cannot load %s: %s", a.model.c_str(), last_error().c_str());
    const llama_vocab *vocab = llama_model_get_vocab(r.model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    const int n_layers = llama_model_n_layer(r.model);
    if (!text.empty()) {
        int cap = (int)text.size() + 8;
        ids.resize(cap);
        int n = llama_tokenize(vocab, text.data(), (int32_t)text.size(), ids.data(), cap, true, false);
        if (n < 0) {
            ids.resize(-n);
            n = llama_tokenize(vocab, text.data(), (int32_t)text.size(), ids.data(), -n, true, false);
        }
        if (n <= 0) fail(2, "the prompt encodes to no tokens");
        ids.resize(n);
        if (a.tokenize_only) {
            std::string line;
            for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
            printf("%s\n", line.c_str());
            return 0;
        }
    }
    for (size_t i = 0; i < ids.size(); ++i)
        if (ids[i] >= n_vocab)
            fail(2, "token id %d (position %zu) outside the model's vocabulary [0, %d)", ids[i], i, n_vocab);
    std::vector<llama_token> feed;
    if (!a.decode_ids_path.empty()) {
        feed = read_ids(a.decode_ids_path);
        if ((int)feed.size() < a.n_predict - 1)
            fail(2, "%s: %zu decode ids for %d decode steps", a.decode_ids_path.c_str(), feed.size(), a.n_predict - 1);
        for (size_t i = 0; i < feed.size(); ++i)
            if (feed[i] >= n_vocab)
                fail(2, "%s: token id %d outside the model's vocabulary [0, %d)", a.decode_ids_path.c_str(), feed[i], n_vocab);
    }
    const int n_prompt = (int)ids.size();
    const int need = n_prompt + a.n_predict;
    const int n_ctx_train = llama_model_n_ctx_train(r.model);
    if (a.ctx && need > a.ctx)
        fail(2, "context too large: %d prompt + %d new tokens do not fit -c %d", n_prompt, a.n_predict, a.ctx);
    if (n_ctx_train > 0 && need - 1 > n_ctx_train)
        fail(2, "context too large: %d prompt + %d new tokens exceed the model's context of %d", n_prompt,
             a.n_predict, n_ctx_train);
    const int n_ctx = a.ctx ? a.ctx : need;

    std::string arch = meta(r.model, "general.architecture");
    int n_experts = atoi(meta(r.model, (arch + ".expert_count").c_str()).c_str());
    int top_k = atoi(meta(r.model, (arch + ".expert_used_count").c_str()).c_str());
    const bool tracing = !a.trace_path.empty();

    Collector col;
    col.n_layers = n_layers;
    col.pending.assign(n_layers, {});
    col.pending_rows.assign(n_layers, 0);

    const int threads = a.threads > 0 ? a.threads : default_threads();
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)n_ctx;
    cp.n_batch = (uint32_t)(a.logits_path.empty() ? std::min(a.batch, n_ctx) : n_ctx);  // logits: one call
    cp.n_ubatch = (uint32_t)std::min(a.ubatch, (int)cp.n_batch);
    cp.n_seq_max = 1;
    cp.n_threads = threads;
    cp.n_threads_batch = a.threads_batch > 0 ? a.threads_batch : threads;
    cp.flash_attn_type = a.flash_attn == "on"    ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                         : a.flash_attn == "off" ? LLAMA_FLASH_ATTN_TYPE_DISABLED
                                                 : LLAMA_FLASH_ATTN_TYPE_AUTO;
    cp.no_perf = false;
    cp.type_k = cp.type_v = a.kv_type == "f32" ? GGML_TYPE_F32 : a.kv_type == "q8_0" ? GGML_TYPE_Q8_0 : GGML_TYPE_F16;
    if (tracing && n_experts > 0) {
        cp.cb_eval = eval_cb;
        cp.cb_eval_user_data = &col;
    }
    r.ctx = llama_init_from_model(r.model, cp);
    if (!r.ctx) fail(1, "llama.cpp could not create a context of %d tokens: %s", n_ctx, last_error().c_str());
    attach_pools(r, threads, (int)cp.n_threads_batch);
    llama_sampler_chain_params sp = llama_sampler_chain_default_params();
    sp.no_perf = false;
    r.smpl = llama_sampler_chain_init(sp);
    llama_sampler_chain_add(r.smpl, llama_sampler_init_greedy());
    const double t_loaded = now_ms();  // model loaded (mapped) and context created
    fputs(before_load.c_str(), stderr);
    const int n_batch = (int)cp.n_batch;
    r.batch = llama_batch_init(n_batch, 0, 1);
    r.batch_ok = true;

    const int n_tok = n_prompt + a.n_predict - 1;  // tokens that go through the model
    Trace tr;
    tr.n_layers = n_layers;
    tr.k = top_k;
    tr.n_tokens = n_tok;
    if (tracing && n_experts > 0) {
        tr.experts.assign((size_t)n_layers * n_tok * top_k, 0);
        tr.computed.assign((size_t)n_layers * n_tok, 0);
    }

    // perf: llama.cpp's own counters lose the prompt pass when a decode grows the output buffer
    // (it synchronizes and restarts its clock before computing), so the runner times every
    // llama_decode + llama_synchronize itself and prints the totals in llama.cpp's perf format
    double perf_prompt_ms = 0, perf_eval_ms = 0, perf_sample_ms = 0;
    int perf_prompt_n = 0, perf_eval_n = 0, perf_sample_n = 0;
    auto sample = [&]() {
        const double ts = now_ms();
        llama_token t = llama_sampler_sample(r.smpl, r.ctx, -1);
        perf_sample_ms += now_ms() - ts;
        ++perf_sample_n;
        return t;
    };
    auto decode = [&](const llama_token *toks, int n, int pos0, bool all_outputs) {
        llama_batch &b = r.batch;
        b.n_tokens = n;
        for (int i = 0; i < n; ++i) {
            b.token[i] = toks[i];
            b.pos[i] = pos0 + i;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = 0;
            b.logits[i] = (all_outputs || i == n - 1) ? 1 : 0;
        }
        const double ts = now_ms();
        int rc = llama_decode(r.ctx, b);
        if (rc != 0) fail(1, "llama_decode failed (%d) at position %d: %s", rc, pos0, last_error().c_str());
        llama_synchronize(r.ctx);
        (n > 1 ? perf_prompt_ms : perf_eval_ms) += now_ms() - ts;
        (n > 1 ? perf_prompt_n : perf_eval_n) += n > 1 ? n : 1;
        if (!tr.experts.empty()) {
            if (!col.error.empty()) fail(1, "routing trace: %s", col.error.c_str());
            if (col.k != 0 && col.k != top_k) fail(1, "routing trace: %d experts per token, the model says %d", col.k, top_k);
            for (int l = 0; l < n_layers; ++l) {
                int rows = col.pending_rows[l];
                if (rows == 0) continue;
                // every token's row, or (a layer that dropped non-output rows) the last token's
                int first = rows == n ? pos0 : (rows == 1 ? pos0 + n - 1 : -1);
                if (first < 0) fail(1, "routing trace: layer %d gave %d rows for a batch of %d tokens", l, rows, n);
                for (int i = 0; i < rows; ++i) {
                    int p = first + i;
                    if (p >= n_tok) continue;
                    for (int j = 0; j < top_k; ++j)
                        tr.experts[((size_t)l * n_tok + p) * top_k + j] = (uint8_t)col.pending[l][(size_t)i * top_k + j];
                    tr.computed[(size_t)l * n_tok + p] = 1;
                }
                col.pending[l].clear();
                col.pending_rows[l] = 0;
            }
        }
    };

    // prefill: calls of at most n_batch tokens; never a 1-token last call (llama.cpp books a
    // 1-token call as "eval", not "prompt eval")
    std::vector<int> bounds;
    for (int s = 0; s < n_prompt; s += n_batch) bounds.push_back(s);
    bounds.push_back(n_prompt);
    if (bounds.size() > 2 && bounds[bounds.size() - 1] - bounds[bounds.size() - 2] == 1) bounds[bounds.size() - 2] -= 1;
    std::vector<double> token_ms;
    std::vector<llama_token> out;
    double t0 = 0, t_prefill = 0;
    auto generate = [&](bool report) {
        token_ms.clear();
        out.clear();
        t0 = now_ms();
        for (size_t i = 0; i + 1 < bounds.size(); ++i)
            decode(ids.data() + bounds[i], bounds[i + 1] - bounds[i], bounds[i], !tr.experts.empty());
        llama_synchronize(r.ctx);
        t_prefill = now_ms();
        llama_token tok = sample();
        token_ms.push_back(now_ms() - t0);
        out.push_back(tok);
        if (report) residency(a.model, "after_prefill");
        int pos = n_prompt;
        for (int i = 1; i < a.n_predict; ++i) {
            decode(feed.empty() ? &tok : &feed[i - 1], 1, pos, true);
            tok = sample();
            token_ms.push_back(now_ms() - t0);
            out.push_back(tok);
            ++pos;
        }
        llama_synchronize(r.ctx);
    };
    if (!a.logits_path.empty()) {
        // logits of every prompt position (for checks against the reference engine), then exit
        for (size_t i = 0; i + 1 < bounds.size(); ++i) decode(ids.data() + bounds[i], bounds[i + 1] - bounds[i], bounds[i], true);
        std::string raw;
        raw.reserve((size_t)n_prompt * n_vocab * 4);
        for (int i = 0; i < n_prompt; ++i) {
            const float *lg = llama_get_logits_ith(r.ctx, i);
            if (!lg) fail(1, "no logits for prompt position %d", i);
            raw.append((const char *)lg, (size_t)n_vocab * 4);
        }
        std::string data = npy("<f4", {n_prompt, n_vocab}, raw);
        FILE *f = fopen(a.logits_path.c_str(), "wb");
        if (!f || fwrite(data.data(), 1, data.size(), f) != data.size() || fclose(f) != 0)
            fail(1, "cannot write %s: %s", a.logits_path.c_str(), strerror(errno));
        return 0;
    }
    if (a.warmup) {
        // one untimed generation (same prompt and N), then a clean KV cache and perf counters
        generate(false);
        llama_memory_clear(llama_get_memory(r.ctx), true);
        llama_perf_context_reset(r.ctx);
        llama_sampler_reset(r.smpl);
        llama_perf_sampler_reset(r.smpl);
        perf_prompt_ms = perf_eval_ms = perf_sample_ms = 0;
        perf_prompt_n = perf_eval_n = perf_sample_n = 0;
        std::fill(tr.computed.begin(), tr.computed.end(), 0);
        fprintf(stderr, "%s: warmup run finished\n", PROG);
    }
    generate(true);

    std::string ids_line;
    for (size_t i = 0; i < out.size(); ++i) ids_line += (i ? " " : "") + std::to_string(out[i]);
    printf("%s\n", ids_line.c_str());
    fflush(stdout);

    {
        // llama.cpp's perf lines (llama_perf_context_print's format), from the runner's clock
        const double end = now_ms();
        auto per = [](double ms, int n) { return n ? ms / n : 0.0; };
        auto rate = [](double ms, int n) { return ms > 0 ? 1e3 * n / ms : 0.0; };
        fprintf(stderr, "llama_perf_sampler_print:    sampling time = %10.2f ms / %5d runs   (%8.2f ms per token, %8.2f tokens per second)\n",
                perf_sample_ms, perf_sample_n, per(perf_sample_ms, perf_sample_n), rate(perf_sample_ms, perf_sample_n));
        fprintf(stderr, "llama_perf_context_print:        load time = %10.2f ms\n", t_loaded - t_start);
        fprintf(stderr, "llama_perf_context_print: prompt eval time = %10.2f ms / %5d tokens (%8.2f ms per token, %8.2f tokens per second)\n",
                perf_prompt_ms, perf_prompt_n, per(perf_prompt_ms, perf_prompt_n), rate(perf_prompt_ms, perf_prompt_n));
        fprintf(stderr, "llama_perf_context_print:        eval time = %10.2f ms / %5d runs   (%8.2f ms per token, %8.2f tokens per second)\n",
                perf_eval_ms, perf_eval_n, per(perf_eval_ms, perf_eval_n), rate(perf_eval_ms, perf_eval_n));
        fprintf(stderr, "llama_perf_context_print:       total time = %10.2f ms / %5d tokens\n", end - t_start,
                perf_prompt_n + perf_eval_n);
        if (a.verbose) {
            g_log_pass = true;
            llama_perf_context_print(r.ctx);  // llama.cpp's own counters, for comparison
            g_log_pass = false;
        }
        fflush(stderr);
    }

    std::string tl = "devprof_tokens: {\"prefill_start_ms\": 0, \"prefill_end_ms\": ";
    char num[48];
    snprintf(num, sizeof num, "%.3f", t_prefill - t0);
    tl += num;
    tl += ", \"threads\": " + std::to_string(threads) + ", \"token_ms\": [";
    for (size_t i = 0; i < token_ms.size(); ++i) {
        snprintf(num, sizeof num, "%s%.3f", i ? ", " : "", token_ms[i]);
        tl += num;
    }
    tl += "]}\n";
    fputs(tl.c_str(), stderr);
    fflush(stderr);

    if (tracing) {
        const int L = n_layers, E = n_experts > 0 ? n_experts : 0, K = E ? top_k : 0;
        std::vector<uint8_t> experts, computed((size_t)L * n_tok, 1);
        if (E) {
            // rows llama.cpp never computed (none when all outputs are requested): repeat the next
            // computed token's experts of that layer
            for (int l = 0; l < L; ++l) {
                int next = -1;
                for (int p = n_tok - 1; p >= 0; --p) {
                    if (tr.computed[(size_t)l * n_tok + p]) next = p;
                    else if (next >= 0)
                        memcpy(&tr.experts[((size_t)l * n_tok + p) * K], &tr.experts[((size_t)l * n_tok + next) * K], K);
                }
                if (next < 0) fail(1, "routing trace: no expert ids captured for layer %d", l);
                for (int p = n_tok - 1; p >= 0 && !tr.computed[(size_t)l * n_tok + p]; --p) {
                    // trailing uncomputed rows: repeat the last computed one
                    int q = p;
                    while (q >= 0 && !tr.computed[(size_t)l * n_tok + q]) --q;
                    if (q >= 0) memcpy(&tr.experts[((size_t)l * n_tok + p) * K], &tr.experts[((size_t)l * n_tok + q) * K], K);
                }
            }
            experts = tr.experts;
            computed = tr.computed;
        }
        std::vector<int64_t> ranges = expert_ranges(a.model, L, E);
        std::vector<int64_t> offsets((size_t)L * E), nbytes((size_t)L * E), layer_bytes(L, 0);
        for (int l = 0; l < L; ++l)
            for (int e = 0; e < E; ++e) {
                size_t at = ((size_t)l * E + e) * 6;
                offsets[(size_t)l * E + e] = ranges[at];
                nbytes[(size_t)l * E + e] = ranges[at + 1] + ranges[at + 3] + ranges[at + 5];
                if (e == 0) layer_bytes[l] = nbytes[(size_t)l * E];
            }
        std::string d_model, d_bundle, d_rt;
        std::string s_model = meta(r.model, "devprof.model");
        if (s_model.empty()) s_model = meta(r.model, "general.name");
        std::string u_model = utf32(s_model, &d_model), u_bundle = utf32(meta(r.model, "devprof.bundle_id"), &d_bundle),
                    u_rt = utf32("llamacpp", &d_rt);
        write_npz(a.trace_path, {
            {"experts", npy("|u1", {L, n_tok, K}, raw_of(experts))},
            {"computed", npy("|b1", {L, n_tok}, raw_of(computed))},
            {"n_prompt", npy("<i8", {}, i64_scalar(n_prompt))},
            {"n_decode", npy("<i8", {}, i64_scalar(n_tok - n_prompt))},
            {"n_experts", npy("<i8", {}, i64_scalar(E))},
            {"top_k", npy("<i8", {}, i64_scalar(K))},
            {"layer_block_bytes", npy("<i8", {L}, raw_of(layer_bytes))},
            {"block_offsets", npy("<i8", {L, E}, raw_of(offsets))},
            {"block_nbytes", npy("<i8", {L, E}, raw_of(nbytes))},
            {"block_ranges", npy("<i8", {L, E, 3, 2}, raw_of(ranges))},
            {"model", npy(d_model, {}, u_model)},
            {"bundle_id", npy(d_bundle, {}, u_bundle)},
            {"runtime", npy(d_rt, {}, u_rt)},
        });
    }
    residency(a.model, "exit");
    print_status();
    return 0;
}

int main(int argc, char **argv) {
    try {
        return run(parse_args(argc, argv));
    } catch (const Exit &e) {
        fflush(stdout);
        fprintf(stderr, "%s: error: %s\n", PROG, e.msg.c_str());
        return e.code;
    } catch (const std::bad_alloc &) {
        fprintf(stderr, "%s: error: out of memory\n", PROG);
        return 1;
    } catch (const std::exception &e) {
        fprintf(stderr, "%s: error: %s\n", PROG, e.what());
        return 1;
    }
}
