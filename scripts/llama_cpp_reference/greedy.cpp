// Greedy (temperature 0) decoding with llama.cpp, for dyno's GGUF
// correctness fixtures. Reads prompts (one rendered prompt per line, as a
// JSON string) and writes one JSON object per prompt: the prompt's token
// ids, the generated token ids, the generated text, and at every step the
// gap between the largest and second-largest logit (llama.cpp's own
// near-tie margin). Built against libllama by make_fixtures.sh.
//
// usage: greedy MODEL.gguf PROMPTS.txt MAX_TOKENS > OUT.jsonl
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

static std::string json_escape(const std::string & s) {
    std::string out;
    for (unsigned char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += (char) c;
                }
        }
    }
    return out;
}

// Minimal JSON string decoding for the prompts file (\n, \", \\, \t, \uXXXX < 0x80).
static bool json_unescape(const std::string & line, std::string & out) {
    size_t i = line.find('"');
    if (i == std::string::npos) return false;
    for (++i; i < line.size(); ++i) {
        char c = line[i];
        if (c == '"') return true;
        if (c != '\\') { out += c; continue; }
        if (++i >= line.size()) return false;
        switch (line[i]) {
            case 'n': out += '\n'; break;
            case 't': out += '\t'; break;
            case 'r': out += '\r'; break;
            case '"': out += '"'; break;
            case '\\': out += '\\'; break;
            case '/': out += '/'; break;
            case 'u': {
                if (i + 4 >= line.size()) return false;
                unsigned v = std::stoul(line.substr(i + 1, 4), nullptr, 16);
                if (v >= 0x80) return false;
                out += (char) v;
                i += 4;
                break;
            }
            default: return false;
        }
    }
    return false;
}

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPTS.jsonl MAX_TOKENS\n", argv[0]);
        return 2;
    }
    const int max_tokens = atoi(argv[3]);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    std::ifstream in(argv[2]);
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty()) continue;
        std::string prompt;
        if (!json_unescape(line, prompt)) { fprintf(stderr, "bad prompt line: %s\n", line.c_str()); return 1; }

        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = 4096;
        cp.n_batch = 4096;
        cp.n_threads = 2;
        cp.n_threads_batch = 2;
        llama_context * ctx = llama_init_from_model(model, cp);
        if (!ctx) { fprintf(stderr, "cannot create a context\n"); return 1; }

        const int n = -llama_tokenize(vocab, prompt.c_str(), prompt.size(), nullptr, 0, true, true);
        std::vector<llama_token> tokens(n);
        if (llama_tokenize(vocab, prompt.c_str(), prompt.size(), tokens.data(), n, true, true) < 0) {
            fprintf(stderr, "tokenize failed\n"); return 1;
        }
        std::vector<llama_token> out;
        std::vector<float> gaps;
        std::string text;
        llama_batch batch = llama_batch_get_one(tokens.data(), tokens.size());
        llama_token next = 0;
        for (int step = 0; step < max_tokens; ++step) {
            if (llama_decode(ctx, batch)) { fprintf(stderr, "decode failed\n"); return 1; }
            const float * logits = llama_get_logits_ith(ctx, -1);
            int best = 0, second = -1;
            for (int t = 1; t < n_vocab; ++t) {
                if (logits[t] > logits[best]) { second = best; best = t; }
                else if (second < 0 || logits[t] > logits[second]) { second = t; }
            }
            next = best;
            out.push_back(next);
            gaps.push_back(logits[best] - logits[second]);
            char buf[256];
            int len = llama_token_to_piece(vocab, next, buf, sizeof buf, 0, false);
            if (len > 0) text.append(buf, len);
            if (llama_vocab_is_eog(vocab, next)) break;
            batch = llama_batch_get_one(&next, 1);
        }
        printf("{\"prompt_token_ids\":[");
        for (size_t i = 0; i < tokens.size(); ++i) printf("%s%d", i ? "," : "", tokens[i]);
        printf("],\"output_token_ids\":[");
        for (size_t i = 0; i < out.size(); ++i) printf("%s%d", i ? "," : "", out[i]);
        printf("],\"top2_gaps\":[");
        for (size_t i = 0; i < gaps.size(); ++i) printf("%s%.5f", i ? "," : "", gaps[i]);
        printf("],\"text\":\"%s\"}\n", json_escape(text).c_str());
        fflush(stdout);
        llama_free(ctx);
    }
    llama_model_free(model);
    return 0;
}
