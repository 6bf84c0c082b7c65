// AXI4 memory ports for Verilator testbenches: the one memory timing model of RTL runs.
//
// The bytes live in C++ (axi_mem_dpi.cpp, reached through DPI-C); every port of a design
// reads and writes the same memory. Each port decides at a rising clock edge, from the
// design's signals just before it, and drives registered outputs after it. The timing of
// each port, per clock cycle:
//
// * read (axi_mem_reader): a burst's first beat is offered LATENCY cycles after its
//   address handshake (handshake at edge k: the first beat's handshake at edge k + LATENCY
//   at the earliest); at most OUTSTANDING bursts are accepted and not yet answered
//   (ARREADY is low while OUTSTANDING are); with RATE > 0 (a data port whose channel
//   delivers fewer than BYTES bytes per cycle) a beat is offered when the channel has
//   earned BYTES bytes, RATE bytes are earned each cycle no beat is offered, at most one
//   beat's worth stays earned while no beat is offered, and nothing is earned while an
//   offered beat waits for RREADY (bandwidth unused is lost, as a DRAM channel's is);
//   a beat beyond the memory answers SLVERR with zero data.
// * write (axi_mem_writer): W beats are accepted once their burst's address is; a
//   burst's response comes WRITE_LATENCY cycles after its last data beat; a burst
//   touching bytes beyond the memory answers SLVERR (the bytes inside are written).
//   At most DEPTH write bursts are held (address taken, response not yet taken):
//   AWREADY is low while DEPTH are.
// * every ready/valid the model drives (ARREADY, RVALID, AWREADY, WREADY, BVALID) is
//   withheld in a cycle when its axi_withhold generator says so: pattern 0 never,
//   1 each cycle with probability stall_q32 / 2^32, 2 in runs of HOLD_MIN..HOLD_MAX
//   cycles separated by open runs of 1..open_max cycles (sim/core_harness.py derives the
//   inputs from a run's pattern and stall fraction). Each signal has a generator of its
//   own, numbered by port and signal, that starts from the run's seed: a run is
//   reproducible, and the ports' stalls are independent.
// * a valid once raised stays until its handshake, with its payload.
//
// Protocol checks on the design's side (each failure is reported through
// airfoil_mem_protocol_error and ends up in the run's protocol_errors): WLAST must mark
// exactly the last beat of a burst; ARVALID/AWVALID/WVALID, once raised, stay raised with
// a stable payload until their handshake.

import "DPI-C" function int airfoil_mem_read_word(input longint addr, input int nbytes,
                                                 output bit [1023:0] data);
import "DPI-C" function int airfoil_mem_write_word(input longint addr, input int nbytes,
                                                  input bit [1023:0] data,
                                                  input bit [127:0] strb);
import "DPI-C" function void airfoil_mem_protocol_error(input string msg);

// One withholding decision per cycle (hold), drawn from a generator of its own.
module axi_withhold #(parameter int STREAM = 0, parameter int HOLD_MIN = 20,
                      parameter int HOLD_MAX = 200) (
    input  logic        clk,
    input  logic        rst,
    input  logic [63:0] seed,
    input  logic [1:0]  pattern,     // 0 none, 1 random, 2 bursts
    input  logic [31:0] stall_q32,   // P(withhold) * 2^32 of pattern 1 (0: never)
    input  logic [31:0] open_max,    // longest open run of pattern 2 (0: never withhold)
    output logic        hold
);
    logic [63:0] state;
    logic [31:0] left;      // cycles left in the current run of pattern 2
    logic        held;      // the current run of pattern 2 withholds

    function automatic logic [63:0] splitmix(input logic [63:0] x);
        logic [63:0] z;
        z = x + 64'h9E3779B97F4A7C15;
        z = (z ^ (z >> 30)) * 64'hBF58476D1CE4E5B9;
        z = (z ^ (z >> 27)) * 64'h94D049BB133111EB;
        return z ^ (z >> 31);
    endfunction

    function automatic logic [63:0] xorshift(input logic [63:0] x);
        logic [63:0] y;
        y = x ^ (x << 13);
        y = y ^ (y >> 7);
        return y ^ (y << 17);
    endfunction

    logic [63:0] next;
    logic [31:0] r;
    assign next = xorshift(state);
    assign r = next[63:32];

    always_ff @(posedge clk) begin
        if (rst) begin
            state <= splitmix(seed ^ splitmix(64'(STREAM))) | 64'd1;
            left <= 0;
            held <= 1'b0;
            hold <= 1'b0;
        end else begin
            state <= next;
            case (pattern)
                2'd1: hold <= stall_q32 != 0 && r < stall_q32;
                2'd2: begin
                    if (open_max == 0) begin
                        hold <= 1'b0;
                    end else if (left == 0) begin
                        // Alternate: a withheld run of HOLD_MIN..HOLD_MAX cycles, then an
                        // open run of 1..open_max cycles.
                        held <= !held;
                        hold <= !held;
                        left <= !held ? 32'(HOLD_MIN) + r % 32'(HOLD_MAX - HOLD_MIN + 1) - 1
                                      : r % open_max;
                    end else begin
                        left <= left - 1;
                        hold <= held;
                    end
                end
                default: hold <= 1'b0;
            endcase
        end
    end
endmodule

// The AR and R channels of one port.
module axi_mem_reader #(parameter int BYTES = 16, parameter int LATENCY = 1,
                        parameter int OUTSTANDING = 1, parameter real RATE = 0.0,
                        parameter int STREAM = 0, parameter string NAME = "port") (
    input  logic                 clk,
    input  logic                 rst,
    input  logic [63:0]          seed,
    input  logic [1:0]           pattern,
    input  logic [31:0]          stall_q32,
    input  logic [31:0]          open_max,
    input  logic [63:0]          araddr,
    input  logic [7:0]           arlen,
    input  logic                 arvalid,
    output logic                 arready,
    output logic [BYTES*8-1:0]   rdata,
    output logic [1:0]           rresp,
    output logic                 rlast,
    output logic                 rvalid,
    input  logic                 rready
);
    localparam int QBITS = $clog2(OUTSTANDING + 1);
    localparam bit PACED = RATE > 0.0 && RATE < real'(BYTES);

    logic [63:0] b_addr [OUTSTANDING];
    logic [8:0]  b_beats [OUTSTANDING];
    logic [63:0] b_due [OUTSTANDING];
    logic [QBITS-1:0] head, tail, count;
    logic [8:0]  beat;            // next beat of the head burst
    logic [63:0] cycle;
    logic [63:0] beats;           // beats handed over (the run's read_beats)
    real         credit;
    logic        hold_ar, hold_r;

    axi_withhold #(.STREAM(8 * STREAM)) w_ar (.clk, .rst, .seed, .pattern, .stall_q32,
                                               .open_max, .hold(hold_ar));
    axi_withhold #(.STREAM(8 * STREAM + 1)) w_r (.clk, .rst, .seed, .pattern, .stall_q32,
                                                  .open_max, .hold(hold_r));

    function automatic logic [QBITS-1:0] inc(input logic [QBITS-1:0] i);
        return i == QBITS'(OUTSTANDING - 1) ? '0 : i + 1'b1;
    endfunction

    // Report a protocol error of the design on this port.
    function automatic void protocol_error(input string what);
        airfoil_mem_protocol_error($sformatf("%s: cycle %0d: %s", NAME, cycle, what));
    endfunction

    // Checks: a raised ARVALID stays, with its payload, until ARREADY.
    logic        ar_was;
    logic [63:0] ar_addr_was;
    logic [7:0]  ar_len_was;

    always_ff @(posedge clk) begin
        logic [QBITS-1:0] h, n;
        logic [8:0] bt, h_beats;
        logic [63:0] h_addr, h_due;
        logic on, pushed;
        real c;
        bit [1023:0] word;
        int ok;
        if (rst) begin
            head <= '0; tail <= '0; count <= '0; beat <= '0;
            cycle <= 0; beats <= 0;
            credit <= real'(BYTES);
            arready <= 1'b0; rvalid <= 1'b0; rlast <= 1'b0; rresp <= 2'd0;
            rdata <= '0;
            ar_was <= 1'b0;
        end else begin
            h = head; n = count; bt = beat; on = rvalid; c = credit;
            pushed = arready && arvalid;
            if (ar_was && !arvalid)
                protocol_error("ARVALID dropped before ARREADY");
            else if (ar_was && (araddr != ar_addr_was || arlen != ar_len_was))
                protocol_error("AR payload changed while waiting");
            ar_was <= arvalid && !arready;
            ar_addr_was <= araddr;
            ar_len_was <= arlen;
            if (pushed) begin
                b_addr[tail] <= araddr;
                b_beats[tail] <= {1'b0, arlen} + 9'd1;
                b_due[tail] <= cycle + 64'(LATENCY);
                tail <= inc(tail);
                n = n + 1'b1;
            end
            if (rvalid && rready) begin
                beats <= beats + 1;
                bt = bt + 1'b1;
                if (bt == b_beats[h]) begin
                    h = inc(h);
                    n = n - 1'b1;
                    bt = '0;
                end
                on = 1'b0;
            end
            arready <= n < QBITS'(OUTSTANDING) && !hold_ar;
            // The head burst: the one accepted at this edge when it is the only one.
            if (pushed && n == 1) begin
                h_addr = araddr; h_beats = {1'b0, arlen} + 9'd1; h_due = cycle + 64'(LATENCY);
            end else begin
                h_addr = b_addr[h]; h_beats = b_beats[h]; h_due = b_due[h];
            end
            if (PACED && !on)
                c = c + RATE;
            if (!on && n != 0 && h_due <= cycle + 1 && (!PACED || c >= real'(BYTES))
                    && !hold_r) begin
                if (PACED)
                    c = c - real'(BYTES);
                ok = airfoil_mem_read_word(h_addr + 64'(bt) * 64'(BYTES), BYTES, word);
                rdata <= word[BYTES*8-1:0];
                rresp <= ok != 0 ? 2'd0 : 2'd2;
                rlast <= bt == h_beats - 9'd1;
                on = 1'b1;
            end
            if (PACED && !on && c > real'(BYTES))
                c = real'(BYTES);
            rvalid <= on;
            credit <= c;
            head <= h;
            count <= n;
            beat <= bt;
            cycle <= cycle + 1;
        end
    end
endmodule

// The AW, W and B channels of one port.
module axi_mem_writer #(parameter int BYTES = 16, parameter int WRITE_LATENCY = 0,
                        parameter int DEPTH = 64, parameter int STREAM = 0,
                        parameter string NAME = "port") (
    input  logic                 clk,
    input  logic                 rst,
    input  logic [63:0]          seed,
    input  logic [1:0]           pattern,
    input  logic [31:0]          stall_q32,
    input  logic [31:0]          open_max,
    input  logic [63:0]          awaddr,
    input  logic [7:0]           awlen,
    input  logic                 awvalid,
    output logic                 awready,
    input  logic [BYTES*8-1:0]   wdata,
    input  logic [BYTES-1:0]     wstrb,
    input  logic                 wlast,
    input  logic                 wvalid,
    output logic                 wready,
    output logic [1:0]           bresp,
    output logic                 bvalid,
    input  logic                 bready
);
    localparam int QBITS = $clog2(DEPTH + 1);

    // Bursts whose address was taken and whose last beat was not.
    logic [63:0] a_addr [DEPTH];
    logic [8:0]  a_beats [DEPTH];
    logic [QBITS-1:0] a_head, a_tail, a_count;
    logic [8:0]  beat;
    logic        err;
    // Responses due (cycle, SLVERR).
    logic [63:0] r_due [DEPTH];
    logic        r_err [DEPTH];
    logic [QBITS-1:0] r_head, r_tail, r_count;
    logic [63:0] cycle;
    logic        hold_aw, hold_w, hold_b;

    axi_withhold #(.STREAM(8 * STREAM + 2)) w_aw (.clk, .rst, .seed, .pattern, .stall_q32,
                                               .open_max, .hold(hold_aw));
    axi_withhold #(.STREAM(8 * STREAM + 3)) w_w (.clk, .rst, .seed, .pattern, .stall_q32,
                                                  .open_max, .hold(hold_w));
    axi_withhold #(.STREAM(8 * STREAM + 4)) w_b (.clk, .rst, .seed, .pattern, .stall_q32,
                                                  .open_max, .hold(hold_b));

    function automatic logic [QBITS-1:0] inc(input logic [QBITS-1:0] i);
        return i == QBITS'(DEPTH - 1) ? '0 : i + 1'b1;
    endfunction

    // Report a protocol error of the design on this port.
    function automatic void protocol_error(input string what);
        airfoil_mem_protocol_error($sformatf("%s: cycle %0d: %s", NAME, cycle, what));
    endfunction

    // Checks: a raised AWVALID or WVALID stays, with its payload, until its ready.
    logic        aw_was, w_was;
    logic [63:0] aw_addr_was;
    logic [7:0]  aw_len_was;
    logic [BYTES*8-1:0] w_data_was;
    logic [BYTES-1:0] w_strb_was;
    logic        w_last_was;

    always_ff @(posedge clk) begin
        logic [QBITS-1:0] an, ah, rn, rh;
        logic [8:0] bt;
        logic e, on, r_pushed, r_new_err;
        bit [1023:0] word;
        bit [127:0] strb;
        int ok;
        if (rst) begin
            a_head <= '0; a_tail <= '0; a_count <= '0; beat <= '0; err <= 1'b0;
            r_head <= '0; r_tail <= '0; r_count <= '0;
            cycle <= 0;
            awready <= 1'b0; wready <= 1'b0; bvalid <= 1'b0; bresp <= 2'd0;
            aw_was <= 1'b0; w_was <= 1'b0;
        end else begin
            an = a_count; ah = a_head; rn = r_count; rh = r_head; bt = beat; e = err;
            on = bvalid; r_pushed = 1'b0; r_new_err = 1'b0;
            if (aw_was && !awvalid)
                protocol_error("AWVALID dropped before AWREADY");
            else if (aw_was && (awaddr != aw_addr_was || awlen != aw_len_was))
                protocol_error("AW payload changed while waiting");
            if (w_was && !wvalid)
                protocol_error("WVALID dropped before WREADY");
            else if (w_was && (wdata != w_data_was || wstrb != w_strb_was || wlast != w_last_was))
                protocol_error("W payload changed while waiting");
            aw_was <= awvalid && !awready;
            aw_addr_was <= awaddr; aw_len_was <= awlen;
            w_was <= wvalid && !wready;
            w_data_was <= wdata; w_strb_was <= wstrb; w_last_was <= wlast;
            if (awready && awvalid) begin
                a_addr[a_tail] <= awaddr;
                a_beats[a_tail] <= {1'b0, awlen} + 9'd1;
                a_tail <= inc(a_tail);
                an = an + 1'b1;
            end
            if (wready && wvalid) begin
                word = '0;
                word[BYTES*8-1:0] = wdata;
                strb = '0;
                strb[BYTES-1:0] = wstrb;
                ok = airfoil_mem_write_word(a_addr[ah] + 64'(bt) * 64'(BYTES), BYTES, word, strb);
                if (ok == 0)
                    e = 1'b1;
                bt = bt + 1'b1;
                if (wlast != (bt == a_beats[ah]))
                    protocol_error($sformatf("WLAST=%0d on beat %0d of a %0d-beat burst",
                                             wlast, bt, a_beats[ah]));
                if (bt == a_beats[ah]) begin
                    r_due[r_tail] <= cycle + 1 + 64'(WRITE_LATENCY);
                    r_err[r_tail] <= e;
                    r_tail <= inc(r_tail);
                    rn = rn + 1'b1;
                    r_pushed = 1'b1;
                    r_new_err = e;
                    ah = inc(ah);
                    an = an - 1'b1;
                    bt = '0;
                    e = 1'b0;
                end
            end
            if (bvalid && bready) begin
                rh = inc(rh);
                rn = rn - 1'b1;
                on = 1'b0;
            end
            awready <= 32'(an) + 32'(rn) < DEPTH && !hold_aw;
            wready <= an != 0 && !hold_w;
            // The head response: the one queued at this edge when it is the only one (due
            // WRITE_LATENCY cycles from now).
            if (!on && rn != 0 && !hold_b) begin
                if (r_pushed && rn == 1) begin
                    if (WRITE_LATENCY == 0) begin
                        bresp <= r_new_err ? 2'd2 : 2'd0;
                        on = 1'b1;
                    end
                end else if (r_due[rh] <= cycle + 1) begin
                    bresp <= r_err[rh] ? 2'd2 : 2'd0;
                    on = 1'b1;
                end
            end
            bvalid <= on;
            a_count <= an; a_head <= ah; beat <= bt; err <= e;
            r_count <= rn; r_head <= rh;
            cycle <= cycle + 1;
        end
    end
endmodule
