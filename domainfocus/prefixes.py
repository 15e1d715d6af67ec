"""The decoder's keys and values in restoration: kept for scoring after a window's restoration so far,
and left in place where beam search would copy them for nothing.

Restoration scores candidates span by span (restoration.py): every beam's text for span k, and every
lexicon prefix its search expands, is read by the decoder after the same head (the start token, the
spans chosen before k and the sentinel that opens k). Read from scratch, each of those forward passes
re-reads the head and recomputes the cross-attention keys and values of the whole window, which is
most of their cost. Here each window's head is read once and kept as the decoder's keys and values
(extended, not re-read, when the next span is chosen), the cross-attention keys and values are
computed once per window, and a candidate costs a forward pass over its own few tokens.

Rows of different windows have heads of different lengths; they share one forward pass by padding
the kept keys and values on the left and masking the padding. T5 and mT5 know positions only
relatively, so a shift that is the same for all of a row's tokens changes nothing; the figures
equal a pass over the whole sequence up to float rounding (tests/test_prefixes.py).

Written by hand because generate() has no way to score given continuations of a shared prefix.
"""

LOGITS_PER_CHUNK = 1 << 26  # logits computed at once (rows x positions x vocabulary)
KEPT_BYTES_PER_CHUNK = 1 << 30  # keys and values gathered for the rows of one pass (all layers), in bytes


class DecoderPrefixes:
    """The decoder's keys and values of each window's head, for the windows of one encoded batch."""

    def __init__(self, model, encoded, attention_mask):
        self.model = model
        self.encoded = encoded  # the encoder's last hidden state of the windows, [windows, length, width]
        self.attention_mask = attention_mask
        self.cross = None  # per decoder layer: (keys, values) of cross-attention, [windows, heads, length, size]
        # window -> (head tokens, [(keys, values) [1, heads, len(head), size]] per layer, log-softmax after the head)
        self.kept = {}

    def after(self, rows, heads, suffixes, first):
        """For each row (window, head, suffix tokens, first): the log-softmax over the vocabulary after the
        head and suffix[:i], for i from `first` to len(suffix): a tensor of shape (len(suffix) - first + 1,
        vocabulary). The head must start with the decoder start token."""
        import torch

        wanted = dict(zip(rows, map(tuple, heads)))
        assert all(wanted[row] == tuple(head) for row, head in zip(rows, heads)), "one head per window in a call"
        self.keep(wanted)
        # The distribution after suffix[:i] is the pass's output at suffix position i - 1 (i = 0: kept with the head).
        picked = [list(range(max(start, 1) - 1, len(suffix))) for suffix, start in zip(suffixes, first)]
        needed = [number for number, positions in enumerate(picked) if positions]
        computed = self.forward([rows[number] for number in needed], [suffixes[number] for number in needed],
                                [picked[number] for number in needed])[1]
        computed = dict(zip(needed, computed))
        results = []
        for number, (row, start) in enumerate(zip(rows, first)):
            parts = ([self.kept[row][2][None]] if start == 0 else []) + ([computed[number]] if number in computed else [])
            results.append(torch.cat(parts) if len(parts) > 1 else parts[0])
        return results

    def keep(self, heads):
        """Make self.kept hold the head each window in `heads` ({window: tokens}) asks for, reading only
        what it adds to the head kept before (all windows in one forward pass)."""
        if self.cross is None:
            self.start()
        growing, restarted = {}, False
        for window, head in heads.items():
            head = tuple(head)
            known = self.kept[window][0]
            if head != known:
                if head[:len(known)] != known:  # another head (never in restoration's order): from the start
                    self.kept[window], restarted = self.kept_start[window], True
                    known = self.kept[window][0]
                if head != known:
                    growing[window] = head
        if restarted:
            self.stack()
        if not growing:
            return
        windows = list(growing)
        heads_before = [self.kept[window][0] for window in windows]
        added = [list(growing[window][len(before):]) for window, before in zip(windows, heads_before)]
        width = self.width  # the pass reads the kept heads padded to this width, then the added tokens
        cache, log_probabilities = self.forward(windows, added, [[len(tokens) - 1] for tokens in added], keep=True)
        for number, (window, before, tokens) in enumerate(zip(windows, heads_before, added)):
            begin, end = width - len(before), width + len(tokens)
            layers = [(layer.keys[number:number + 1, :, begin:end].clone(),
                       layer.values[number:number + 1, :, begin:end].clone())
                      for layer in cache.self_attention_cache.layers]
            self.kept[window] = (growing[window], layers, log_probabilities[number][0])
        self.stack()

    def start(self):
        """Read the decoder start token for every window: the cross-attention keys and values, and the first head."""
        windows = list(range(self.encoded.shape[0]))
        start = self.model.config.decoder_start_token_id
        cache, log_probabilities = self.forward(windows, [[start]] * len(windows), [[0]] * len(windows), keep=True)
        self.cross = [(layer.keys, layer.values) for layer in cache.cross_attention_cache.layers]
        for window in windows:
            layers = [(layer.keys[window:window + 1].clone(), layer.values[window:window + 1].clone())
                      for layer in cache.self_attention_cache.layers]
            self.kept[window] = ((start,), layers, log_probabilities[window][0])
        self.kept_start = dict(self.kept)
        self.stack()

    def stack(self):
        """Every window's kept keys and values, padded on the left to the longest head, in one tensor per
        layer (self.stacked, [windows, heads, self.width, size]): a pass picks its rows from it."""
        import torch

        windows = range(len(self.kept))
        self.width = max(len(self.kept[window][0]) for window in windows)
        self.stacked = [tuple(torch.cat([left_padded(self.kept[window][1][number][part], self.width)
                                         for window in windows]) for part in (0, 1))
                        for number in range(len(self.cross))]

    def forward(self, rows, suffixes, picked, keep=False):
        """One decoder pass per chunk of rows over `suffixes`, after each row's kept head (padded on
        the left to the longest, the padding masked; none before start()). Returns (the last chunk's cache when `keep`, [the
        log-softmax at the suffix positions `picked` lists for each row]).

        Only those positions go through the LM head: a hook hands it just their hidden states, so
        scoring never builds logits for every position (mT5's 250,112-token head would make them
        gigabytes). Written by hand because the model's forward has no option for it."""
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        if not rows:
            return None, []
        pad = self.model.config.pad_token_id
        device = self.attention_mask.device
        vocabulary = self.model.get_output_embeddings().weight.shape[0]
        config = self.model.config
        bytes_per_token = 2 * config.num_decoder_layers * config.num_heads * config.d_kv * self.encoded.element_size()
        width = self.width if self.cross is not None else 0  # of the kept heads (none before start())
        kept_bytes = (width + max(map(len, suffixes)) + self.encoded.shape[1]) * bytes_per_token  # a row's, gathered
        step = len(rows) if keep else max(min(LOGITS_PER_CHUNK // (max(map(len, picked)) * vocabulary),
                                              KEPT_BYTES_PER_CHUNK // kept_bytes), 1)
        cache, results = None, []
        for begin in range(0, len(rows), step):
            chunk = rows[begin:begin + step]
            chunk_suffixes, chunk_picked = suffixes[begin:begin + step], picked[begin:begin + step]
            index = torch.tensor(chunk, device=device)
            length = max(map(len, chunk_suffixes))
            decoder = torch.tensor([list(suffix) + [pad] * (length - len(suffix)) for suffix in chunk_suffixes],
                                   device=device)
            if width:
                kept = torch.tensor([len(self.kept[row][0]) for row in chunk], device=device)
                mask = (torch.arange(width + length, device=device) >= width - kept[:, None]).long()
                cache = held_cache([(keys[index], values[index], cross_keys[index], cross_values[index])
                                    for (keys, values), (cross_keys, cross_values) in zip(self.stacked, self.cross)])
                # Cross-attention reads the cache; the encoder states only give the batch its shape.
                encoded = self.encoded[:1].expand(len(chunk), -1, -1)
            else:
                cache, encoded, mask = None, self.encoded[index], torch.ones_like(decoder)
            picked_rows = torch.tensor([row for row, positions in enumerate(chunk_picked) for _ in positions],
                                       device=device)
            picked_positions = torch.tensor([position for positions in chunk_picked for position in positions],
                                            device=device)
            hook = self.model.get_output_embeddings().register_forward_pre_hook(
                lambda module, arguments, rows=picked_rows, at=picked_positions: (arguments[0][rows, at][None],))
            try:
                output = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                                    attention_mask=self.attention_mask[index], decoder_input_ids=decoder,
                                    decoder_attention_mask=mask, past_key_values=cache, use_cache=True)
            finally:
                hook.remove()
            cache = output.past_key_values
            log_probabilities = torch.log_softmax(output.logits[0].float(), dim=-1)
            results += list(log_probabilities.split([len(positions) for positions in chunk_picked]))
        return (cache if keep else None), results


def left_padded(tensor, width):
    """Keys or values [1, heads, length, size] with zeros before them up to `width` positions."""
    import torch

    missing = width - tensor.shape[2]
    return tensor if not missing else torch.nn.functional.pad(tensor, (0, 0, missing, 0))


def held_cache(layers):
    """An EncoderDecoderCache holding, per decoder layer, (self-attention keys, values, cross-attention keys,
    values) as given. Built by hand: its constructor concatenates each tensor onto an empty one, a copy
    of every key and value for every pass."""
    from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

    caches = DynamicCache(), DynamicCache()
    for tensors in layers:
        for cache, (keys, values) in zip(caches, (tensors[:2], tensors[2:])):
            layer = DynamicLayer()
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
            cache.layers.append(layer)
    return EncoderDecoderCache(*caches)


def beam_cache(model):
    """An empty cache for beam search over windows whose cross-attention keys and values, once computed,
    are never reordered: transformers reorders the whole cache at every step, but a window's beams share
    its encoder states, so reordering them copies identical rows (with mT5 and long windows, hundreds of
    megabytes a step)."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    class SharedCrossAttention(EncoderDecoderCache):
        def reorder_cache(self, beam_idx):
            self.self_attention_cache.reorder_cache(beam_idx)  # beams move only among their window's rows

    return SharedCrossAttention(DynamicCache(config=model.config), DynamicCache(config=model.config))
